//! `tokenfile serve` (SPEC §4). Placeholder until the serve issue lands.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::{Error, Exit, Result};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The token file as the user named it (may be a symlink, e.g. a Kubernetes `..data` link).
    pub file: PathBuf,
    pub socket: Option<PathBuf>,
    pub http: Option<SocketAddr>,
}

pub fn run(options: ServeOptions) -> Result<Exit> {
    let _ = options;
    Err(Error::usage("serve is not implemented yet"))
}
