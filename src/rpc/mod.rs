//! The network accelerator: `eia serve` exposes a host's devices' virtual accelerators over gRPC
//! (schema in `proto/eia/v1/eia.proto`), and [`RemoteAccelerator`] is a client with the same
//! [`crate::Backend`] API as a local accelerator; a [`Fleet`] is one client of many servers.

/// The generated protobuf messages and gRPC stubs.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("eia.v1");
}

pub mod auth;
pub mod capacity;
pub mod chunks;
pub mod client;
pub mod convert;
pub mod echo;
pub mod fleet;
pub mod listener;
pub mod metrics;
pub mod server;

pub use auth::Tokens;
pub use capacity::ServerCapacity;
pub use client::{
    ClientConfig, Connection, Operand, Output, Program, Ran, RemoteAccelerator, RemoteBuffer,
};
pub use fleet::Fleet;
pub use server::{spawn, spawn_pool, ServerConfig, ServerHandle, Service};
