//! Bearer tokens: a TOML file lists each token by the SHA-256 of its secret (never the secret
//! itself), with the tiers it may attach and how many accelerators it may hold at once.
//!
//! ```toml
//! [[token]]
//! name = "alice"                       # shown in errors, metrics and logs
//! sha256 = "9f86d08…"                  # `eia token-hash <secret>` prints it
//! tiers = ["eia2.medium", "eia2.large"] # or ["*"] for every tier
//! max_accelerators = 2
//! ```

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::accelerator::tier::canonical;
use crate::error::{Error, Result};

/// Who is calling: a configured token, or anyone when the server has no tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub name: String,
    /// Tier names it may attach (lower case, no `ml.`); `None` = any.
    tiers: Option<Vec<String>>,
    pub max_accelerators: usize,
}

impl Principal {
    /// Anyone, on a server without tokens.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            tiers: None,
            max_accelerators: usize::MAX,
        }
    }

    /// Whether it may attach the tier called `tier` (canonical name).
    pub fn may_attach(&self, tier: &str) -> bool {
        self.tiers
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| *n == canonical(tier)))
    }
}

/// The SHA-256 of a token secret, in lower-case hex (what the token file stores).
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    tiers: Vec<String>,
    max_accelerators: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    token: Vec<TokenEntry>,
}

/// The tokens a server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// (hash, principal)
    entries: Vec<(String, Principal)>,
}

impl Tokens {
    /// Parses a token file (see the module docs); `source_name` names it in errors.
    pub fn from_toml(source_name: &str, text: &str) -> Result<Tokens> {
        let bad = |msg: String| Error::Config {
            source_name: source_name.to_string(),
            msg,
        };
        let file: TokenFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut tokens = Tokens::default();
        for t in file.token {
            let valid_hash =
                t.sha256.len() == 64 && t.sha256.chars().all(|c| c.is_ascii_hexdigit());
            if !valid_hash {
                return Err(bad(format!(
                    "token {:?}: sha256 must be 64 hex digits (`eia token-hash <secret>`)",
                    t.name
                )));
            }
            let hash = t.sha256.to_ascii_lowercase();
            if tokens
                .entries
                .iter()
                .any(|(h, p)| *h == hash || p.name == t.name)
            {
                return Err(bad(format!("token {:?} is listed twice", t.name)));
            }
            let tiers = if t.tiers.iter().any(|n| n == "*") {
                None
            } else {
                Some(t.tiers.iter().map(|n| canonical(n)).collect())
            };
            tokens.entries.push((
                hash,
                Principal {
                    name: t.name,
                    tiers,
                    max_accelerators: t.max_accelerators,
                },
            ));
        }
        Ok(tokens)
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            source_name: path.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        Tokens::from_toml(&path.display().to_string(), &text)
    }

    /// The principal of a request's `authorization: Bearer <secret>` metadata.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, Status> {
        let header = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated("this server needs `authorization: Bearer <token>`")
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let hash = hash(secret.trim());
        self.entries
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_round_trip() {
        let text = format!(
            "[[token]]\nname = \"alice\"\nsha256 = \"{}\"\ntiers = [\"ml.eia2.medium\"]\nmax_accelerators = 2\n\
             [[token]]\nname = \"ops\"\nsha256 = \"{}\"\ntiers = [\"*\"]\nmax_accelerators = 9\n",
            hash("s3cret"),
            hash("root")
        );
        let tokens = Tokens::from_toml("tokens.toml", &text).unwrap();
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", "Bearer s3cret".parse().unwrap());
        let alice = tokens.authenticate(&md).unwrap();
        assert_eq!((alice.name.as_str(), alice.max_accelerators), ("alice", 2));
        assert!(alice.may_attach("EIA2.medium") && !alice.may_attach("eia2.large"));
        md.insert("authorization", "Bearer root".parse().unwrap());
        assert!(tokens.authenticate(&md).unwrap().may_attach("anything"));
        md.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            tokens.authenticate(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.remove("authorization");
        assert_eq!(
            tokens.authenticate(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn bad_token_files_are_config_errors() {
        for (text, expected) in [
            (
                "[[token]]\nname = \"a\"\nsha256 = \"xyz\"\ntiers = []\nmax_accelerators = 1\n",
                "64 hex",
            ),
            ("[[token]]\nname = \"a\"\n", "missing field"),
            ("token = 1", "invalid type"),
        ] {
            let e = Tokens::from_toml("t.toml", text).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
        }
    }
}
