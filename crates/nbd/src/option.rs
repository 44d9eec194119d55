//! Option haggling, sans-IO: parsing what the client sends before transmission and encoding
//! what the server answers. The runtime ([`crate::handshake`]) reads bytes and calls these.

use bytes::{BufMut, BytesMut};

use crate::error::ConnError;
use crate::proto;

/// Length of an option header (`IHAVEOPT`, option, data length).
pub const OPTION_HEADER_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

/// Parses an option header. A wrong magic or a payload over [`proto::MAX_OPTION_LEN`] is a
/// violation that closes the connection (the stream cannot be resynchronized, or the
/// payload is not worth reading).
pub fn parse_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ConnError> {
    let magic = u64::from_be_bytes(b[0..8].try_into().unwrap());
    if magic != proto::IHAVEOPT {
        return Err(ConnError::Protocol(format!("option magic {magic:#x} is not IHAVEOPT")));
    }
    let option = u32::from_be_bytes(b[8..12].try_into().unwrap());
    let len = u32::from_be_bytes(b[12..16].try_into().unwrap());
    if len > proto::MAX_OPTION_LEN {
        return Err(ConnError::Protocol(format!("option {option} announces {len} bytes of data (limit {})", proto::MAX_OPTION_LEN)));
    }
    Ok(OptionHeader { option, len })
}

/// Checks the client flags sent after the greeting; returns whether the client asked for
/// `NO_ZEROES`. Unknown flags close the connection, as the protocol requires.
pub fn parse_client_flags(flags: u32) -> Result<bool, ConnError> {
    let known = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(ConnError::Protocol(format!("unknown client flags {flags:#x}")));
    }
    Ok(flags & proto::FLAG_C_NO_ZEROES != 0)
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoRequest {
    pub name: String,
    /// Information types asked for (`NBD_INFO_*`), unknown ones included.
    pub infos: Vec<u16>,
}

/// One option, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    Info(GoRequest),
    Go(GoRequest),
    /// Known to the protocol or not, but not offered here (structured replies, TLS, meta
    /// contexts): answered `NBD_REP_ERR_UNSUP`.
    Unsupported(u32),
}

/// Why an option's data is malformed: answered `NBD_REP_ERR_INVALID` with this text (for
/// `NBD_OPT_EXPORT_NAME`, which has no error reply, the connection is closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadOption(pub String);

fn name_of(bytes: &[u8]) -> Result<String, BadOption> {
    if bytes.len() > proto::MAX_NAME_LEN {
        return Err(BadOption(format!("export name of {} bytes is longer than {}", bytes.len(), proto::MAX_NAME_LEN)));
    }
    let s = std::str::from_utf8(bytes).map_err(|_| BadOption("export name is not UTF-8".into()))?;
    if s.contains('\0') {
        return Err(BadOption("export name contains NUL".into()));
    }
    Ok(s.to_string())
}

/// Parses the data of option `option`.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, BadOption> {
    match option {
        proto::OPT_EXPORT_NAME => Ok(ClientOption::ExportName(name_of(data)?)),
        // Data sent with ABORT is to be ignored.
        proto::OPT_ABORT => Ok(ClientOption::Abort),
        proto::OPT_LIST if data.is_empty() => Ok(ClientOption::List),
        proto::OPT_LIST => Err(BadOption("NBD_OPT_LIST takes no data".into())),
        proto::OPT_INFO => Ok(ClientOption::Info(parse_go(data)?)),
        proto::OPT_GO => Ok(ClientOption::Go(parse_go(data)?)),
        other => Ok(ClientOption::Unsupported(other)),
    }
}

fn parse_go(data: &[u8]) -> Result<GoRequest, BadOption> {
    // Name length (4), name, information request count (2), requests (2 each).
    if data.len() < 6 {
        return Err(BadOption(format!("NBD_OPT_GO/INFO data of {} bytes is truncated (at least 6)", data.len())));
    }
    let name_len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
    let rest = &data[4..];
    if name_len > rest.len() - 2 {
        return Err(BadOption(format!("name length {name_len} exceeds the option data ({} bytes)", data.len())));
    }
    let name = name_of(&rest[..name_len])?;
    let rest = &rest[name_len..];
    let count = u16::from_be_bytes(rest[0..2].try_into().unwrap()) as usize;
    let rest = &rest[2..];
    if rest.len() != count * 2 {
        return Err(BadOption(format!("{count} information requests need {} bytes, {} were sent", count * 2, rest.len())));
    }
    let infos = rest.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    Ok(GoRequest { name, infos })
}

/// What the server knows of one export when answering `NBD_OPT_INFO`/`GO`/`EXPORT_NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub size: u64,
    pub read_only: bool,
    pub description: String,
}

/// Size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// 1, 512 or 4096: requests not aligned to it are answered `EINVAL`.
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

impl BlockSizes {
    /// `minimum` must be a power of two no larger than 4096 (checked by the server config).
    pub fn new(minimum: u32) -> BlockSizes {
        BlockSizes { minimum, preferred: proto::PREFERRED_BLOCK.max(minimum), maximum: proto::MAX_PAYLOAD }
    }
}

/// Transmission flags of an export: everything this server implements, `READ_ONLY` for
/// read-only exports. `CAN_MULTI_CONN` holds because no connection caches anything: a
/// write is durable before its reply, on whichever connection it came.
pub fn transmission_flags(read_only: bool) -> u16 {
    let mut f = proto::FLAG_HAS_FLAGS
        | proto::FLAG_SEND_FLUSH
        | proto::FLAG_SEND_FUA
        | proto::FLAG_SEND_TRIM
        | proto::FLAG_SEND_WRITE_ZEROES
        | proto::FLAG_CAN_MULTI_CONN;
    if read_only {
        f |= proto::FLAG_READ_ONLY;
    }
    f
}

/// The server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&proto::NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// Appends one option reply to `out`.
pub fn put_reply(out: &mut BytesMut, option: u32, reply: u32, data: &[u8]) {
    out.put_u64(proto::REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// Appends an error reply with a human-readable message (clipped to 4096 bytes).
pub fn put_error(out: &mut BytesMut, option: u32, reply: u32, message: &str) {
    let mut end = message.len().min(proto::MAX_NAME_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    put_reply(out, option, reply, &message.as_bytes()[..end]);
}

/// Appends the `NBD_REP_SERVER` reply describing one export in an `NBD_OPT_LIST` answer.
pub fn put_server(out: &mut BytesMut, name: &str, description: &str) {
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    data.put_u32(name.len() as u32);
    data.put_slice(name.as_bytes());
    data.put_slice(description.as_bytes());
    put_reply(out, proto::OPT_LIST, proto::REP_SERVER, &data);
}

/// Appends the successful answer to `NBD_OPT_INFO`/`GO`: `NBD_INFO_EXPORT`, the block sizes
/// (always: they are hints to clients that did not ask, a contract for those that did), the
/// name and description when asked for, then `NBD_REP_ACK`.
pub fn put_info_answer(out: &mut BytesMut, option: u32, req: &GoRequest, export: &ExportInfo, sizes: BlockSizes) {
    let mut info = Vec::with_capacity(14);
    info.put_u16(proto::INFO_EXPORT);
    info.put_u64(export.size);
    info.put_u16(transmission_flags(export.read_only));
    put_reply(out, option, proto::REP_INFO, &info);
    put_block_sizes(out, option, sizes);
    if req.infos.contains(&proto::INFO_NAME) {
        info.clear();
        info.put_u16(proto::INFO_NAME);
        info.put_slice(export.name.as_bytes());
        put_reply(out, option, proto::REP_INFO, &info);
    }
    if req.infos.contains(&proto::INFO_DESCRIPTION) && !export.description.is_empty() {
        info.clear();
        info.put_u16(proto::INFO_DESCRIPTION);
        info.put_slice(export.description.as_bytes());
        put_reply(out, option, proto::REP_INFO, &info);
    }
    put_reply(out, option, proto::REP_ACK, &[]);
}

/// Appends the `NBD_INFO_BLOCK_SIZE` reply.
pub fn put_block_sizes(out: &mut BytesMut, option: u32, sizes: BlockSizes) {
    let mut info = Vec::with_capacity(14);
    info.put_u16(proto::INFO_BLOCK_SIZE);
    info.put_u32(sizes.minimum);
    info.put_u32(sizes.preferred);
    info.put_u32(sizes.maximum);
    put_reply(out, option, proto::REP_INFO, &info);
}

/// Whether a client may enter transmission without having asked for the block sizes: only
/// with the default minimum of 1 (anything else must be agreed, or unaligned requests from a
/// client that never saw the constraint would fail).
pub fn may_skip_block_sizes(sizes: BlockSizes) -> bool {
    sizes.minimum == 1
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes unless the client
/// negotiated `NO_ZEROES`.
pub fn export_name_answer(export: &ExportInfo, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.put_u64(export.size);
    out.put_u16(transmission_flags(export.read_only));
    if !no_zeroes {
        out.put_bytes(0, 124);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.put_u32(name.len() as u32);
        d.put_slice(name);
        d.put_u16(infos.len() as u16);
        for i in infos {
            d.put_u16(*i);
        }
        d
    }

    #[test]
    fn go_round_trips_name_and_info_requests() {
        let d = go_data(b"vol-a", &[proto::INFO_BLOCK_SIZE, 77]);
        assert_eq!(
            parse_option(proto::OPT_GO, &d),
            Ok(ClientOption::Go(GoRequest { name: "vol-a".into(), infos: vec![proto::INFO_BLOCK_SIZE, 77] }))
        );
        assert_eq!(parse_option(proto::OPT_INFO, &go_data(b"", &[])), Ok(ClientOption::Info(GoRequest { name: "".into(), infos: vec![] })));
    }

    #[test]
    fn go_rejects_every_truncation_and_bad_lengths() {
        for d in [go_data(b"vol-a", &[3, 1]), go_data(b"", &[]), go_data(b"", &[3])] {
            for cut in 0..d.len() {
                assert!(parse_option(proto::OPT_GO, &d[..cut]).is_err(), "{d:?} truncated at {cut}");
                assert!(parse_option(proto::OPT_INFO, &d[..cut]).is_err(), "{d:?} truncated at {cut}");
            }
            assert!(parse_option(proto::OPT_GO, &d).is_ok());
        }
        let d = go_data(b"vol-a", &[3, 1]);
        let mut long = d.clone();
        long.push(0);
        assert!(parse_option(proto::OPT_GO, &long).is_err());
        let mut huge = d.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_option(proto::OPT_GO, &huge).is_err());
        assert!(parse_option(proto::OPT_GO, &go_data(&[0xff, 0xfe], &[])).is_err(), "not UTF-8");
        assert!(parse_option(proto::OPT_GO, &go_data(b"a\0b", &[])).is_err(), "NUL");
    }

    proptest::proptest! {
        /// Any option number with any data parses or is refused, never panics; accepted
        /// GO/INFO data re-encodes to the same bytes.
        #[test]
        fn any_option_data_parses_or_is_refused(option in 0u32..12, data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                                                name in "[a-z@]{0,8}", infos in proptest::collection::vec(0u16..5, 0..4), structured in proptest::prelude::any::<bool>()) {
            let data = if structured { go_data(name.as_bytes(), &infos) } else { data };
            if let Ok(ClientOption::Go(req) | ClientOption::Info(req)) = parse_option(option, &data) {
                proptest::prop_assert_eq!(go_data(req.name.as_bytes(), &req.infos), data);
            }
        }
    }

    #[test]
    fn header_rejects_bad_magic_and_oversized_data() {
        let mut h = [0u8; 16];
        h[0..8].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
        h[8..12].copy_from_slice(&7u32.to_be_bytes());
        h[12..16].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(parse_header(&h).unwrap(), OptionHeader { option: 7, len: 10 });
        h[12..16].copy_from_slice(&(proto::MAX_OPTION_LEN + 1).to_be_bytes());
        assert!(parse_header(&h).is_err());
        h[0] ^= 1;
        assert!(parse_header(&h).is_err());
    }

    #[test]
    fn client_flags_unknown_bits_are_refused() {
        assert!(!parse_client_flags(1).unwrap());
        assert!(parse_client_flags(3).unwrap());
        assert!(parse_client_flags(4).is_err());
    }

    #[test]
    fn list_with_data_is_invalid_and_abort_ignores_data() {
        assert!(parse_option(proto::OPT_LIST, b"x").is_err());
        assert_eq!(parse_option(proto::OPT_ABORT, b"xyz"), Ok(ClientOption::Abort));
        assert_eq!(parse_option(proto::OPT_STRUCTURED_REPLY, b""), Ok(ClientOption::Unsupported(proto::OPT_STRUCTURED_REPLY)));
    }

    #[test]
    fn info_answer_carries_export_and_block_size_then_ack() {
        let mut out = BytesMut::new();
        let export = ExportInfo { name: "v".into(), size: 1 << 30, read_only: true, description: "d".into() };
        let req = GoRequest { name: "v".into(), infos: vec![proto::INFO_NAME] };
        put_info_answer(&mut out, proto::OPT_GO, &req, &export, BlockSizes::new(512));
        // INFO_EXPORT: 20-byte header + 12.
        assert_eq!(u32::from_be_bytes(out[12..16].try_into().unwrap()), proto::REP_INFO);
        assert_eq!(u64::from_be_bytes(out[22..30].try_into().unwrap()), 1 << 30);
        let flags = u16::from_be_bytes(out[30..32].try_into().unwrap());
        assert_ne!(flags & proto::FLAG_READ_ONLY, 0);
        // INFO_BLOCK_SIZE follows: 20-byte header + 14.
        assert_eq!(u16::from_be_bytes(out[52..54].try_into().unwrap()), proto::INFO_BLOCK_SIZE);
        assert_eq!(u32::from_be_bytes(out[54..58].try_into().unwrap()), 512);
        assert_eq!(u32::from_be_bytes(out[58..62].try_into().unwrap()), 4096);
        // The last reply is an ACK without data.
        let tail = &out[out.len() - 20..];
        assert_eq!(u32::from_be_bytes(tail[12..16].try_into().unwrap()), proto::REP_ACK);
        assert_eq!(u32::from_be_bytes(tail[16..20].try_into().unwrap()), 0);
    }
}
