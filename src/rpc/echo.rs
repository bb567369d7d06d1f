//! A bare tonic echo server: the floor `benches/network.rs` puts beside eia's RPCs in the same
//! run (same transport and message sizes, no accelerator work).

use std::net::SocketAddr;
use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("eia.echo.v1");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{Blob, Size};

/// The echo service.
#[derive(Default)]
pub struct EchoService;

type BlobStream = Pin<Box<dyn Stream<Item = Result<Blob, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    async fn upload(&self, req: Request<Streaming<Blob>>) -> Result<Response<Size>, Status> {
        let mut stream = req.into_inner();
        let mut bytes = 0u64;
        while let Some(b) = stream.message().await? {
            bytes += b.data.len() as u64;
        }
        Ok(Response::new(Size { bytes, chunk: 0 }))
    }

    type DownloadStream = BlobStream;

    async fn download(&self, req: Request<Size>) -> Result<Response<BlobStream>, Status> {
        let Size { bytes, chunk } = req.into_inner();
        let chunk = chunk.clamp(1, 64 << 20);
        let n = bytes.div_ceil(chunk);
        let stream = tokio_stream::iter((0..n).map(move |i| {
            let len = chunk.min(bytes - i * chunk) as usize;
            Ok(Blob {
                data: vec![0u8; len],
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the echo service on `addr` from its own thread and runtime (as `eia::rpc::spawn`
/// serves eia, with the same HTTP/2 windows and TCP options), for the life of the process;
/// returns the address.
pub fn spawn(addr: SocketAddr, max_message_bytes: usize) -> std::io::Result<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let service = EchoServer::new(EchoService)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let _ = tonic::transport::Server::builder()
                .initial_stream_window_size(Some(super::server::WINDOW_BYTES))
                .initial_connection_window_size(Some(2 * super::server::WINDOW_BYTES))
                .add_service(service)
                .serve_with_incoming(super::listener::incoming(
                    listener,
                    super::listener::Limits::default(),
                ))
                .await;
        })
    });
    Ok(local)
}
