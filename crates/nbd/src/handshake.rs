//! The handshake runtime: greets, reads options and answers them with the sans-IO pieces of
//! [`crate::option`], until the client picks an export (returned) or leaves.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ConnError, OpenError};
use crate::export::Export;
use crate::option::{self, ClientOption, ExportInfo, GoRequest, OPTION_HEADER_LEN};
use crate::proto;
use crate::server::Shared;

/// How the handshake ended.
pub(crate) enum Outcome {
    /// Transmission starts on this export.
    Serve(Arc<dyn Export>),
    /// The client aborted or hung up, or asked for an export that could not be opened
    /// with `NBD_OPT_EXPORT_NAME` (which has no error reply).
    Closed,
}

fn info_of(e: &dyn Export) -> ExportInfo {
    ExportInfo { name: e.name().to_string(), size: e.size(), read_only: e.read_only(), description: e.description() }
}

async fn open(shared: &Shared, name: &str) -> Result<Arc<dyn Export>, OpenError> {
    let name = match (name, &shared.cfg.default_export) {
        ("", Some(default)) => default.as_str(),
        ("", None) => return Err(OpenError::Invalid("this server has no default export: name a volume (NBD_OPT_LIST lists them)".into())),
        (name, _) => name,
    };
    shared.catalog.open(name).await
}

pub(crate) async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, shared: &Shared) -> Result<Outcome, ConnError> {
    s.write_all(&option::greeting()).await?;
    s.flush().await?;
    let no_zeroes = option::parse_client_flags(s.read_u32().await?)?;
    loop {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        let mut stop = shared.stop.subscribe();
        let read = tokio::select! {
            r = s.read_exact(&mut hdr) => r,
            // Shutting down: a connection still haggling is closed.
            _ = crate::server::stopped(&mut stop) => return Ok(Outcome::Closed),
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Outcome::Closed),
            Err(e) => return Err(e.into()),
        }
        let h = option::parse_header(&hdr)?;
        let mut data = vec![0u8; h.len as usize];
        s.read_exact(&mut data).await?;
        let mut out = BytesMut::new();
        let parsed = option::parse_option(h.option, &data);
        let stopping = *shared.stop.borrow();
        if stopping && h.option == proto::OPT_EXPORT_NAME {
            // EXPORT_NAME has no error reply.
            return Ok(Outcome::Closed);
        }
        if stopping && !matches!(parsed, Ok(ClientOption::Abort)) {
            option::put_error(&mut out, h.option, proto::REP_ERR_SHUTDOWN, "the server is shutting down");
            s.write_all(&out).await?;
            continue;
        }
        let outcome = match parsed {
            Err(bad) if h.option == proto::OPT_EXPORT_NAME => return Err(ConnError::Protocol(bad.0)),
            Err(bad) => {
                option::put_error(&mut out, h.option, proto::REP_ERR_INVALID, &bad.0);
                None
            }
            Ok(ClientOption::ExportName(_)) if !option::may_skip_block_sizes(shared.cfg.block_sizes()) => {
                tracing::info!(min_block = shared.cfg.min_block, "NBD_OPT_EXPORT_NAME cannot learn the minimum block size, closing");
                return Ok(Outcome::Closed);
            }
            Ok(ClientOption::ExportName(name)) => match open(shared, &name).await {
                Ok(export) => {
                    s.write_all(&option::export_name_answer(&info_of(&*export), no_zeroes)).await?;
                    s.flush().await?;
                    return Ok(Outcome::Serve(export));
                }
                Err(e) => {
                    tracing::info!(export = %name, "NBD_OPT_EXPORT_NAME refused, closing: {e}");
                    return Ok(Outcome::Closed);
                }
            },
            Ok(ClientOption::Abort) => {
                option::put_reply(&mut out, h.option, proto::REP_ACK, &[]);
                // The client may already have gone; that is fine.
                let _ = s.write_all(&out).await;
                let _ = s.flush().await;
                return Ok(Outcome::Closed);
            }
            Ok(ClientOption::List) => {
                match shared.catalog.list().await {
                    Ok(list) => {
                        for e in list {
                            option::put_server(&mut out, &e.name, &e.description);
                        }
                        option::put_reply(&mut out, h.option, proto::REP_ACK, &[]);
                    }
                    Err(e) => option::put_error(&mut out, h.option, e.reply_type(), &e.to_string()),
                }
                None
            }
            Ok(ClientOption::Info(req)) => {
                answer_info(&mut out, shared, h.option, &req).await;
                None
            }
            Ok(ClientOption::Go(req)) => answer_info(&mut out, shared, h.option, &req).await,
            Ok(ClientOption::Unsupported(o)) => {
                option::put_error(&mut out, o, proto::REP_ERR_UNSUP, &format!("option {o} is not supported by this server"));
                None
            }
        };
        s.write_all(&out).await?;
        s.flush().await?;
        if let Some(export) = outcome {
            return Ok(Outcome::Serve(export));
        }
    }
}

/// Appends the answer to INFO/GO; returns the export when it was opened (and, for GO, the
/// client may enter transmission).
async fn answer_info(out: &mut BytesMut, shared: &Shared, opt: u32, req: &GoRequest) -> Option<Arc<dyn Export>> {
    let sizes = shared.cfg.block_sizes();
    match open(shared, &req.name).await {
        Ok(_) if opt == proto::OPT_GO && !option::may_skip_block_sizes(sizes) && !req.infos.contains(&proto::INFO_BLOCK_SIZE) => {
            option::put_block_sizes(out, opt, sizes);
            let why = format!("this server requires a minimum block size of {}: ask for NBD_INFO_BLOCK_SIZE", sizes.minimum);
            option::put_error(out, opt, proto::REP_ERR_BLOCK_SIZE_REQD, &why);
            None
        }
        Ok(export) => {
            option::put_info_answer(out, opt, req, &info_of(&*export), shared.cfg.block_sizes());
            Some(export)
        }
        Err(e) => {
            option::put_error(out, opt, e.reply_type(), &e.to_string());
            None
        }
    }
}
