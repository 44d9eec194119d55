//! Transmission requests, sans-IO: parsing the 28-byte header, deciding what a request asks
//! for (or which NBD error answers it), and encoding simple replies.

use crate::error::ConnError;
use crate::proto;

pub const REQUEST_LEN: usize = 28;
pub const REPLY_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// Parses a request header. A wrong magic closes the connection (the stream cannot be
/// resynchronized). For `NBD_CMD_WRITE` the caller must then read `len` bytes of payload,
/// see [`write_payload_len`].
pub fn parse_header(b: &[u8; REQUEST_LEN]) -> Result<RequestHeader, ConnError> {
    let magic = u32::from_be_bytes(b[0..4].try_into().unwrap());
    if magic != proto::REQUEST_MAGIC {
        return Err(ConnError::Protocol(format!("request magic {magic:#x}")));
    }
    Ok(RequestHeader {
        flags: u16::from_be_bytes(b[4..6].try_into().unwrap()),
        kind: u16::from_be_bytes(b[6..8].try_into().unwrap()),
        cookie: u64::from_be_bytes(b[8..16].try_into().unwrap()),
        offset: u64::from_be_bytes(b[16..24].try_into().unwrap()),
        len: u32::from_be_bytes(b[24..28].try_into().unwrap()),
    })
}

/// Bytes of payload following the header: `len` for a write, 0 otherwise. A write payload
/// over [`proto::MAX_PAYLOAD`] closes the connection rather than being read.
pub fn write_payload_len(h: &RequestHeader) -> Result<usize, ConnError> {
    if h.kind != proto::CMD_WRITE {
        return Ok(0);
    }
    if h.len > proto::MAX_PAYLOAD {
        return Err(ConnError::Protocol(format!("write of {} bytes exceeds the maximum payload {}", h.len, proto::MAX_PAYLOAD)));
    }
    Ok(h.len as usize)
}

/// What a valid request asks for. `fua` asks that the reply wait until the effect is
/// durable (tessera writes always are; the export's `flush` is called for it anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    /// Discard: the range reads as zeros afterwards and its space is freed.
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    /// `punch`: whether space may be freed (no `NBD_CMD_FLAG_NO_HOLE`).
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        punch: bool,
    },
    Disconnect,
}

/// What a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub size: u64,
    pub min_block: u32,
    pub read_only: bool,
}

/// Decides what `h` asks for, or the NBD error value answering it:
/// - unknown commands, unknown or misplaced flags, misaligned ranges (to `min_block`),
///   reads over the maximum payload, FLUSH with a range: `EINVAL`;
/// - writes, trims and write-zeroes on a read-only export: `EPERM`;
/// - ranges past the end: `ENOSPC` for WRITE and WRITE_ZEROES, `EINVAL` for READ and TRIM
///   (as the protocol recommends).
pub fn classify(h: &RequestHeader, lim: &Limits) -> Result<Command, u32> {
    // DISC is never answered, whatever its flags and fields.
    if h.kind == proto::CMD_DISC {
        return Ok(Command::Disconnect);
    }
    let fua = h.flags & proto::CMD_FLAG_FUA != 0;
    let allowed = match h.kind {
        proto::CMD_WRITE_ZEROES => proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE,
        _ => proto::CMD_FLAG_FUA,
    };
    if h.flags & !allowed != 0 {
        return Err(proto::EINVAL);
    }
    let (offset, len) = (h.offset, h.len);
    let in_range = offset.checked_add(len as u64).is_some_and(|end| end <= lim.size);
    let aligned = offset.is_multiple_of(lim.min_block as u64) && len.is_multiple_of(lim.min_block);
    let check = |past_end: u32, writes: bool| -> Result<(), u32> {
        if writes && lim.read_only {
            Err(proto::EPERM)
        } else if !aligned {
            Err(proto::EINVAL)
        } else if !in_range {
            Err(past_end)
        } else {
            Ok(())
        }
    };
    match h.kind {
        proto::CMD_READ => {
            if len > proto::MAX_PAYLOAD {
                return Err(proto::EINVAL);
            }
            check(proto::EINVAL, false)?;
            Ok(Command::Read { offset, len })
        }
        proto::CMD_WRITE => {
            check(proto::ENOSPC, true)?;
            Ok(Command::Write { offset, len, fua })
        }
        proto::CMD_TRIM => {
            check(proto::EINVAL, true)?;
            Ok(Command::Trim { offset, len, fua })
        }
        proto::CMD_WRITE_ZEROES => {
            check(proto::ENOSPC, true)?;
            Ok(Command::WriteZeroes { offset, len, fua, punch: h.flags & proto::CMD_FLAG_NO_HOLE == 0 })
        }
        proto::CMD_FLUSH if offset == 0 && len == 0 => Ok(Command::Flush),
        proto::CMD_FLUSH => Err(proto::EINVAL),
        _ => Err(proto::EINVAL),
    }
}

/// A simple reply header: magic, error value, cookie. For a successful READ the data
/// follows it.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; REPLY_LEN] {
    let mut b = [0u8; REPLY_LEN];
    b[0..4].copy_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Encodes a request (for tests and tools that speak to an NBD server).
pub fn encode_request(h: &RequestHeader) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&h.flags.to_be_bytes());
    b[6..8].copy_from_slice(&h.kind.to_be_bytes());
    b[8..16].copy_from_slice(&h.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&h.offset.to_be_bytes());
    b[24..28].copy_from_slice(&h.len.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIM: Limits = Limits { size: 1 << 20, min_block: 512, read_only: false };

    fn req(kind: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader { flags, kind, cookie: 7, offset, len }
    }

    #[test]
    fn valid_commands_are_classified() {
        assert_eq!(classify(&req(proto::CMD_READ, 0, 512, 1024), &LIM), Ok(Command::Read { offset: 512, len: 1024 }));
        assert_eq!(
            classify(&req(proto::CMD_WRITE, proto::CMD_FLAG_FUA, 0, 4096), &LIM),
            Ok(Command::Write { offset: 0, len: 4096, fua: true })
        );
        assert_eq!(
            classify(&req(proto::CMD_WRITE_ZEROES, proto::CMD_FLAG_NO_HOLE, 0, 4096), &LIM),
            Ok(Command::WriteZeroes { offset: 0, len: 4096, fua: false, punch: false })
        );
        assert_eq!(classify(&req(proto::CMD_FLUSH, 0, 0, 0), &LIM), Ok(Command::Flush));
        assert_eq!(classify(&req(proto::CMD_DISC, 0, 0, 0), &LIM), Ok(Command::Disconnect));
        assert_eq!(classify(&req(proto::CMD_DISC, 1 << 5, 9, 9), &LIM), Ok(Command::Disconnect), "DISC is never answered");
        // The whole export, ending exactly at its size.
        assert_eq!(classify(&req(proto::CMD_TRIM, 0, 0, 1 << 20), &LIM), Ok(Command::Trim { offset: 0, len: 1 << 20, fua: false }));
    }

    #[test]
    fn errors_follow_the_protocol_recommendations() {
        assert_eq!(classify(&req(proto::CMD_READ, 0, 100, 512), &LIM), Err(proto::EINVAL), "misaligned offset");
        assert_eq!(classify(&req(proto::CMD_WRITE, 0, 0, 100), &LIM), Err(proto::EINVAL), "misaligned length");
        assert_eq!(classify(&req(proto::CMD_READ, 0, 1 << 20, 512), &LIM), Err(proto::EINVAL), "read past the end");
        assert_eq!(classify(&req(proto::CMD_WRITE, 0, 1 << 20, 512), &LIM), Err(proto::ENOSPC), "write past the end");
        assert_eq!(classify(&req(proto::CMD_WRITE_ZEROES, 0, u64::MAX - 511, 512), &LIM), Err(proto::ENOSPC), "overflow");
        assert_eq!(classify(&req(proto::CMD_TRIM, 0, 1 << 20, 512), &LIM), Err(proto::EINVAL), "trim past the end");
        assert_eq!(classify(&req(proto::CMD_READ, proto::CMD_FLAG_NO_HOLE, 0, 512), &LIM), Err(proto::EINVAL), "misplaced flag");
        assert_eq!(classify(&req(proto::CMD_READ, 1 << 9, 0, 512), &LIM), Err(proto::EINVAL), "unknown flag");
        assert_eq!(classify(&req(5, 0, 0, 512), &LIM), Err(proto::EINVAL), "CACHE is not offered");
        assert_eq!(classify(&req(7, 0, 0, 512), &LIM), Err(proto::EINVAL), "BLOCK_STATUS is not offered");
        assert_eq!(classify(&req(proto::CMD_FLUSH, 0, 0, 512), &LIM), Err(proto::EINVAL), "flush with a range");
        let big = Limits { size: u64::MAX, ..LIM };
        assert_eq!(classify(&req(proto::CMD_READ, 0, 0, proto::MAX_PAYLOAD + 512), &big), Err(proto::EINVAL), "read over max payload");
        let ro = Limits { read_only: true, ..LIM };
        for kind in [proto::CMD_WRITE, proto::CMD_TRIM, proto::CMD_WRITE_ZEROES] {
            assert_eq!(classify(&req(kind, 0, 0, 512), &ro), Err(proto::EPERM));
        }
        assert!(classify(&req(proto::CMD_READ, 0, 0, 512), &ro).is_ok());
    }

    #[test]
    fn oversized_write_payload_closes_the_connection() {
        assert!(write_payload_len(&req(proto::CMD_WRITE, 0, 0, proto::MAX_PAYLOAD + 1)).is_err());
        assert_eq!(write_payload_len(&req(proto::CMD_WRITE, 0, 0, 4096)).unwrap(), 4096);
        assert_eq!(write_payload_len(&req(proto::CMD_READ, 0, 0, u32::MAX)).unwrap(), 0);
    }

    proptest! {
        /// Any header either fails to parse (bad magic) or round-trips; any parsed request
        /// is classified without panicking, and an accepted range always lies inside the
        /// export and respects the minimum block size.
        #[test]
        fn any_header_is_parsed_or_refused(bytes in proptest::array::uniform28(any::<u8>()), magic_ok in any::<bool>(),
                                           min_shift in 0u32..13, size in any::<u64>(), ro in any::<bool>()) {
            let mut b = bytes;
            if magic_ok {
                b[0..4].copy_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
            }
            let Ok(h) = parse_header(&b) else { prop_assert!(!magic_ok); return Ok(()) };
            prop_assert_eq!(encode_request(&h), b);
            let lim = Limits { size, min_block: 1 << min_shift, read_only: ro };
            let _ = write_payload_len(&h);
            let c = classify(&h, &lim);
            let writes = matches!(c, Ok(Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }));
            prop_assert!(!(ro && writes), "a write was accepted on a read-only export");
            match c {
                Ok(Command::Read { offset, len })
                | Ok(Command::Write { offset, len, .. })
                | Ok(Command::Trim { offset, len, .. })
                | Ok(Command::WriteZeroes { offset, len, .. }) => {
                    prop_assert!(offset.checked_add(len as u64).is_some_and(|e| e <= size));
                    prop_assert!(offset % lim.min_block as u64 == 0 && len % lim.min_block == 0);
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
}
