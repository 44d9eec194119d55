//! A minimal NBD client speaking the raw protocol, for tests and tools that need to send
//! exactly the bytes they choose (out-of-order replies, malformed requests). Not a general
//! client: simple replies only, one task at a time.

use std::collections::HashMap;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto;
use crate::request::{encode_request, RequestHeader};

/// One option reply: type and data.
pub type OptReply = (u32, Vec<u8>);

pub struct RawClient {
    pub stream: TcpStream,
    /// Export size and transmission flags, once an export was chosen.
    pub size: u64,
    pub flags: u16,
    /// Read lengths by cookie, to know how much data follows a successful reply.
    reads: HashMap<u64, u32>,
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl RawClient {
    /// Connects and completes the greeting (fixed newstyle, no `NO_ZEROES`); options next.
    pub async fn greet(addr: std::net::SocketAddr) -> io::Result<RawClient> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut g = [0u8; 18];
        stream.read_exact(&mut g).await?;
        if u64::from_be_bytes(g[0..8].try_into().unwrap()) != proto::NBDMAGIC
            || u64::from_be_bytes(g[8..16].try_into().unwrap()) != proto::IHAVEOPT
        {
            return Err(bad("not an NBD newstyle server".into()));
        }
        stream.write_all(&proto::FLAG_C_FIXED_NEWSTYLE.to_be_bytes()).await?;
        Ok(RawClient { stream, size: 0, flags: 0, reads: HashMap::new() })
    }

    /// Greets and enters transmission on `name` with `NBD_OPT_GO` (asking for block sizes).
    pub async fn connect(addr: std::net::SocketAddr, name: &str) -> io::Result<RawClient> {
        let mut c = RawClient::greet(addr).await?;
        let replies = c.option(proto::OPT_GO, &go_data(name, &[proto::INFO_BLOCK_SIZE])).await?;
        match replies.last() {
            Some((proto::REP_ACK, _)) => Ok(c),
            Some((t, msg)) => Err(bad(format!("NBD_OPT_GO refused with {t:#x}: {}", String::from_utf8_lossy(msg)))),
            None => Err(bad("no reply to NBD_OPT_GO".into())),
        }
    }

    /// Sends one option and reads its replies up to the final one (anything but
    /// `NBD_REP_INFO`/`NBD_REP_SERVER`). Records the export of an `NBD_INFO_EXPORT`.
    pub async fn option(&mut self, option: u32, data: &[u8]) -> io::Result<Vec<OptReply>> {
        let mut msg = Vec::with_capacity(16 + data.len());
        msg.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.stream.write_all(&msg).await?;
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.stream.read_exact(&mut h).await?;
            if u64::from_be_bytes(h[0..8].try_into().unwrap()) != proto::REPLY_MAGIC {
                return Err(bad("bad option reply magic".into()));
            }
            let reply = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut d = vec![0u8; len];
            self.stream.read_exact(&mut d).await?;
            if reply == proto::REP_INFO && d.len() == 12 && d[0..2] == proto::INFO_EXPORT.to_be_bytes() {
                self.size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                self.flags = u16::from_be_bytes(d[10..12].try_into().unwrap());
            }
            let last = reply != proto::REP_INFO && reply != proto::REP_SERVER;
            out.push((reply, d));
            if last {
                return Ok(out);
            }
        }
    }

    /// Sends a request (with `payload` for writes; it may differ from `len` on purpose).
    pub async fn send(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) -> io::Result<()> {
        if kind == proto::CMD_READ {
            self.reads.insert(cookie, len);
        }
        let mut msg = encode_request(&RequestHeader { flags, kind, cookie, offset, len }).to_vec();
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg).await
    }

    /// Reads one simple reply: cookie, error value, and the data of a successful read.
    pub async fn reply(&mut self) -> io::Result<(u64, u32, Vec<u8>)> {
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h).await?;
        if u32::from_be_bytes(h[0..4].try_into().unwrap()) != proto::SIMPLE_REPLY_MAGIC {
            return Err(bad("bad simple reply magic".into()));
        }
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let mut data = Vec::new();
        if let Some(len) = self.reads.remove(&cookie) {
            if error == 0 {
                data = vec![0u8; len as usize];
                self.stream.read_exact(&mut data).await?;
            }
        }
        Ok((cookie, error, data))
    }

    /// Sends one request and waits for its reply (nothing else in flight).
    pub async fn call(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        self.send(kind, flags, 0xc0ffee, offset, len, payload).await?;
        let (cookie, error, data) = self.reply().await?;
        if cookie != 0xc0ffee {
            return Err(bad(format!("reply for cookie {cookie:#x}")));
        }
        Ok((error, data))
    }

    /// Whether the server closed the connection (reads EOF within `within`).
    pub async fn closed_by_server(&mut self, within: std::time::Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(tokio::time::timeout(within, self.stream.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// The data of `NBD_OPT_GO`/`NBD_OPT_INFO`.
pub fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}
