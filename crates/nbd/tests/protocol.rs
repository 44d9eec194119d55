//! The NBD server over real TCP with in-memory exports: handshake options, out-of-order
//! replies, FLUSH ordering, error values, disconnects, and malformed input closing only the
//! offending connection. Real client tools (nbdinfo, qemu-io) talk to the same server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_nbd::mem::{Fault, Faulty, MemCatalog, MemExport};
use tessera_nbd::proto::*;
use tessera_nbd::raw_client::{go_data, RawClient};
use tessera_nbd::{Export, ExportError, NbdServer, ServerConfig};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;
const SLOW: Duration = Duration::from_millis(400);

struct Fixture {
    server: NbdServer,
    disk: Arc<MemExport>,
}

/// Exports: `disk` (4 MiB, the first MiB slow, writes at 3 MiB fail with EIO, writes at
/// 3 MiB + 64 KiB panic), `ro`
/// (read-only, 1 MiB); `disk` is the default export.
async fn fixture(cfg: ServerConfig) -> Fixture {
    let disk = MemExport::new("disk", 4 * MIB, false);
    let faulty = Faulty::new(
        disk.clone(),
        vec![
            Fault::Slow { offset: 0, len: MIB, delay: SLOW },
            Fault::Write { offset: 3 * MIB, len: 4096, error: ExportError::Io("injected".into()) },
            Fault::Panic { offset: 3 * MIB + 65536, len: 4096 },
        ],
    );
    let ro = MemExport::new("ro", MIB, true);
    let catalog = MemCatalog::with(vec![faulty as Arc<dyn Export>, ro as Arc<dyn Export>]);
    let cfg = ServerConfig { default_export: Some("disk".into()), ..cfg };
    let server = NbdServer::start("127.0.0.1:0".parse().unwrap(), catalog, cfg).await.unwrap();
    Fixture { server, disk }
}

/// An `NBD_OPT_EXPORT_NAME` option naming `name`.
fn export_name_option(name: &str) -> Vec<u8> {
    let mut msg = IHAVEOPT.to_be_bytes().to_vec();
    msg.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    msg.extend_from_slice(&(name.len() as u32).to_be_bytes());
    msg.extend_from_slice(name.as_bytes());
    msg
}

fn addr(f: &Fixture) -> SocketAddr {
    f.server.addr
}

#[tokio::test]
async fn handshake_options_list_info_go_abort_and_unknown() {
    let f = fixture(ServerConfig::default()).await;
    let mut c = RawClient::greet(addr(&f)).await.unwrap();
    // LIST: one SERVER reply per export, then ACK.
    let r = c.option(OPT_LIST, &[]).await.unwrap();
    let names: Vec<String> =
        r.iter().filter(|(t, _)| *t == REP_SERVER).map(|(_, d)| String::from_utf8_lossy(&d[4..]).into_owned()).collect();
    assert_eq!(names, vec!["disk", "ro"]);
    assert_eq!(r.last().unwrap().0, REP_ACK);
    // LIST with data, structured replies, an unknown option: errors, connection kept.
    assert_eq!(c.option(OPT_LIST, b"x").await.unwrap().last().unwrap().0, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[]).await.unwrap().last().unwrap().0, REP_ERR_UNSUP);
    assert_eq!(c.option(4242, b"whatever").await.unwrap().last().unwrap().0, REP_ERR_UNSUP);
    // GO on an unknown export fails with a message; INFO on a known one describes it.
    let r = c.option(OPT_GO, &go_data("nope", &[])).await.unwrap();
    assert_eq!(r.last().unwrap().0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r.last().unwrap().1).contains("nope"));
    let r = c.option(OPT_INFO, &go_data("ro", &[INFO_BLOCK_SIZE, INFO_NAME])).await.unwrap();
    assert_eq!(r.last().unwrap().0, REP_ACK);
    assert_eq!(c.size, MIB);
    assert_ne!(c.flags & FLAG_READ_ONLY, 0);
    let block = r.iter().find(|(t, d)| *t == REP_INFO && d[0..2] == INFO_BLOCK_SIZE.to_be_bytes()).expect("block sizes sent");
    assert_eq!(u32::from_be_bytes(block.1[2..6].try_into().unwrap()), 1);
    assert_eq!(u32::from_be_bytes(block.1[6..10].try_into().unwrap()), 4096);
    assert_eq!(u32::from_be_bytes(block.1[10..14].try_into().unwrap()), MAX_PAYLOAD);
    // GO with the empty name picks the default export; transmission follows.
    let r = c.option(OPT_GO, &go_data("", &[])).await.unwrap();
    assert_eq!(r.last().unwrap().0, REP_ACK);
    assert_eq!(c.size, 4 * MIB);
    let want = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_CAN_MULTI_CONN;
    assert_eq!(c.flags, want);
    let (err, data) = c.call(CMD_READ, 0, 2 * MIB, 4096, &[]).await.unwrap();
    assert_eq!((err, data.len()), (0, 4096));

    // ABORT is acknowledged and the server closes.
    let mut c = RawClient::greet(addr(&f)).await.unwrap();
    assert_eq!(c.option(OPT_ABORT, &[]).await.unwrap(), vec![(REP_ACK, vec![])]);
    assert!(c.closed_by_server(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn export_name_option_enters_transmission_or_closes() {
    let f = fixture(ServerConfig::default()).await;
    // Known export: size (8), flags (2) and 124 zero bytes, then transmission.
    let mut c = RawClient::greet(addr(&f)).await.unwrap();
    c.stream.write_all(&export_name_option("disk")).await.unwrap();
    let mut answer = [0u8; 134];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut answer).await.unwrap();
    assert_eq!(u64::from_be_bytes(answer[0..8].try_into().unwrap()), 4 * MIB);
    assert!(answer[10..].iter().all(|b| *b == 0));
    assert_eq!(c.call(CMD_WRITE, 0, 2 * MIB, 3, b"abc").await.unwrap().0, 0);
    // Unknown export: EXPORT_NAME has no error reply, so the server closes.
    let mut c = RawClient::greet(addr(&f)).await.unwrap();
    c.stream.write_all(&export_name_option("nope")).await.unwrap();
    assert!(c.closed_by_server(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn replies_come_back_out_of_order_as_requests_finish() {
    let f = fixture(ServerConfig::default()).await;
    let mut c = RawClient::connect(addr(&f), "disk").await.unwrap();
    // Cookie 1 reads the slow first MiB, cookie 2 a fast range: 2 must be answered first.
    c.send(CMD_READ, 0, 1, 0, 4096, &[]).await.unwrap();
    c.send(CMD_READ, 0, 2, 2 * MIB, 4096, &[]).await.unwrap();
    let first = c.reply().await.unwrap();
    assert_eq!((first.0, first.1), (2, 0), "the fast read overtakes the slow one");
    let second = c.reply().await.unwrap();
    assert_eq!((second.0, second.1, second.2.len()), (1, 0, 4096));
}

#[tokio::test]
async fn flush_waits_for_writes_sent_before_it_and_disc_drains() {
    let f = fixture(ServerConfig::default()).await;
    let mut c = RawClient::connect(addr(&f), "disk").await.unwrap();
    let flushes = f.disk.flushes.load(std::sync::atomic::Ordering::Relaxed);
    // A slow write, then FLUSH: the flush may not be answered before the write.
    c.send(CMD_WRITE, 0, 1, 4096, 4, b"slow").await.unwrap();
    c.send(CMD_FLUSH, 0, 2, 0, 0, &[]).await.unwrap();
    assert_eq!(c.reply().await.unwrap().0, 1, "FLUSH answered before the write it must cover");
    assert_eq!(c.reply().await.unwrap(), (2, 0, vec![]));
    assert_eq!(f.disk.flushes.load(std::sync::atomic::Ordering::Relaxed), flushes + 1);
    // FUA flushes too.
    assert_eq!(c.call(CMD_WRITE, CMD_FLAG_FUA, 2 * MIB, 2, b"ok").await.unwrap().0, 0);
    assert_eq!(f.disk.flushes.load(std::sync::atomic::Ordering::Relaxed), flushes + 2);
    // DISC after a slow write: the write is answered and applied, then the server closes.
    c.send(CMD_WRITE, 0, 3, 8192, 4, b"last").await.unwrap();
    c.send(CMD_DISC, 0, 4, 0, 0, &[]).await.unwrap();
    assert_eq!(c.reply().await.unwrap(), (3, 0, vec![]));
    assert!(c.closed_by_server(Duration::from_secs(5)).await);
    assert_eq!(&f.disk.contents()[8192..8196], b"last");
    assert_eq!(&f.disk.contents()[4096..4100], b"slow");
}

#[tokio::test]
async fn commands_do_what_they_claim_and_errors_get_nbd_values() {
    let f = fixture(ServerConfig::default()).await;
    let mut c = RawClient::connect(addr(&f), "disk").await.unwrap();
    let base = 2 * MIB;
    // Unaligned write and read (minimum block 1).
    assert_eq!(c.call(CMD_WRITE, 0, base + 4090, 10, b"0123456789").await.unwrap().0, 0);
    assert_eq!(c.call(CMD_READ, 0, base + 4090, 10, &[]).await.unwrap(), (0, b"0123456789".to_vec()));
    // TRIM frees whole chunks and reads back zeros.
    assert_eq!(c.call(CMD_WRITE, 0, base + 16384, 16384, &[7u8; 16384]).await.unwrap().0, 0);
    let before = f.disk.allocated();
    assert_eq!(c.call(CMD_TRIM, 0, base + 16384, 16384, &[]).await.unwrap().0, 0);
    assert_eq!(f.disk.allocated(), before - 16384, "trim freed the space");
    assert_eq!(c.call(CMD_READ, 0, base + 16384, 16384, &[]).await.unwrap(), (0, vec![0u8; 16384]));
    // WRITE_ZEROES punches; with NO_HOLE it keeps (allocates) the space.
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, base + 65536, 8192, &[]).await.unwrap().0, 0);
    assert_eq!(f.disk.allocated(), before - 16384);
    assert_eq!(c.call(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, base + 65536, 8192, &[]).await.unwrap().0, 0);
    assert_eq!(f.disk.allocated(), before - 16384 + 8192);
    assert_eq!(c.call(CMD_READ, 0, base + 65536, 8192, &[]).await.unwrap(), (0, vec![0u8; 8192]));
    // Errors.
    assert_eq!(c.call(CMD_READ, 0, 4 * MIB, 1, &[]).await.unwrap().0, EINVAL, "read past the end");
    assert_eq!(c.call(CMD_WRITE, 0, 4 * MIB - 1, 2, b"xx").await.unwrap().0, ENOSPC, "write past the end");
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 4 * MIB, 4096, &[]).await.unwrap().0, ENOSPC);
    assert_eq!(c.call(CMD_TRIM, 0, 4 * MIB, 4096, &[]).await.unwrap().0, EINVAL);
    assert_eq!(c.call(5, 0, 0, 4096, &[]).await.unwrap().0, EINVAL, "CACHE is not offered");
    assert_eq!(c.call(CMD_READ, CMD_FLAG_NO_HOLE, 0, 4096, &[]).await.unwrap().0, EINVAL, "flag on the wrong command");
    assert_eq!(c.call(CMD_READ, 0, 0, MAX_PAYLOAD + 1, &[]).await.unwrap().0, EINVAL, "read over the maximum payload");
    assert_eq!(c.call(CMD_WRITE, 0, 3 * MIB, 4096, &[1u8; 4096]).await.unwrap().0, EIO, "injected I/O error");
    // The connection survived all of it.
    assert_eq!(c.call(CMD_READ, 0, base + 4090, 10, &[]).await.unwrap(), (0, b"0123456789".to_vec()));
    // Read-only export: writes are EPERM, reads work.
    let mut ro = RawClient::connect(addr(&f), "ro").await.unwrap();
    for kind in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
        let payload = if kind == CMD_WRITE { vec![0u8; 4096] } else { vec![] };
        assert_eq!(ro.call(kind, 0, 0, 4096, &payload).await.unwrap().0, EPERM);
    }
    assert_eq!(ro.call(CMD_READ, 0, 0, 4096, &[]).await.unwrap().0, 0);
    assert_eq!(f.server.stats().errors, 11, "every refused command is counted");
}

#[tokio::test]
async fn minimum_block_size_is_enforced_when_configured() {
    for min in [512u32, 4096] {
        let f = fixture(ServerConfig { min_block: min, ..ServerConfig::default() }).await;
        let mut c = RawClient::connect(addr(&f), "disk").await.unwrap();
        assert_eq!(c.call(CMD_READ, 0, 2 * MIB + min as u64, min, &[]).await.unwrap().0, 0);
        assert_eq!(c.call(CMD_READ, 0, 2 * MIB + 1, min, &[]).await.unwrap().0, EINVAL);
        assert_eq!(c.call(CMD_WRITE, 0, 2 * MIB, 100, &[1u8; 100]).await.unwrap().0, EINVAL);
        // The refused write's payload was consumed: the stream is still in sync.
        assert_eq!(c.call(CMD_READ, 0, 2 * MIB, min, &[]).await.unwrap(), (0, vec![0u8; min as usize]));
    }
    assert!(NbdServer::start(
        "127.0.0.1:0".parse().unwrap(),
        MemCatalog::with(vec![]),
        ServerConfig { min_block: 100, ..Default::default() }
    )
    .await
    .is_err());
}

/// Sends `garbage` on a fresh connection (after the handshake when `transmission`), and
/// checks the server closes it while another connection keeps being served.
async fn garbage_closes_only_that_connection(f: &Fixture, good: &mut RawClient, garbage: &[u8], transmission: bool) {
    let mut bad = if transmission { RawClient::connect(addr(f), "disk").await.unwrap() } else { RawClient::greet(addr(f)).await.unwrap() };
    bad.stream.write_all(garbage).await.unwrap();
    // A frame cut short stays pending until the client gives up: half-close the stream.
    bad.stream.shutdown().await.unwrap();
    assert!(bad.closed_by_server(Duration::from_secs(10)).await, "server kept a connection that sent {garbage:02x?}");
    let (err, data) = good.call(CMD_READ, 0, 2 * MIB, 4096, &[]).await.unwrap();
    assert_eq!((err, data.len()), (0, 4096));
}

#[tokio::test]
async fn malformed_and_truncated_input_closes_only_that_connection() {
    let f = fixture(ServerConfig::default()).await;
    let mut good = RawClient::connect(addr(&f), "disk").await.unwrap();
    // Transmission: bad magic, truncated header, truncated payload, oversized write.
    garbage_closes_only_that_connection(&f, &mut good, b"GET / HTTP/1.1\r\n\r\n0123456789", true).await;
    garbage_closes_only_that_connection(&f, &mut good, &REQUEST_MAGIC.to_be_bytes(), true).await;
    let mut short_write = tessera_nbd::request::encode_request(&tessera_nbd::request::RequestHeader {
        flags: 0,
        kind: CMD_WRITE,
        cookie: 1,
        offset: 0,
        len: 4096,
    })
    .to_vec();
    short_write.extend_from_slice(&[1u8; 100]);
    garbage_closes_only_that_connection(&f, &mut good, &short_write, true).await;
    let huge = tessera_nbd::request::encode_request(&tessera_nbd::request::RequestHeader {
        flags: 0,
        kind: CMD_WRITE,
        cookie: 1,
        offset: 0,
        len: MAX_PAYLOAD + 1,
    });
    garbage_closes_only_that_connection(&f, &mut good, &huge, true).await;
    // Handshake: bad option magic, an option announcing too much data, truncated option.
    garbage_closes_only_that_connection(&f, &mut good, &[0xffu8; 40], false).await;
    let mut big = IHAVEOPT.to_be_bytes().to_vec();
    big.extend_from_slice(&OPT_GO.to_be_bytes());
    big.extend_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
    garbage_closes_only_that_connection(&f, &mut good, &big, false).await;
    garbage_closes_only_that_connection(&f, &mut good, &IHAVEOPT.to_be_bytes()[..5], false).await;
    // Unknown client flags close before any option.
    let mut s = tokio::net::TcpStream::connect(addr(&f)).await.unwrap();
    let mut g = [0u8; 18];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut g).await.unwrap();
    s.write_all(&0xffu32.to_be_bytes()).await.unwrap();
    let mut b = [0u8; 1];
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut s, &mut b)).await.unwrap().unwrap(), 0);
    assert!(f.server.stats().violations >= 5, "{:?}", f.server.stats());
}

#[tokio::test]
async fn shutdown_answers_requests_in_flight_then_closes() {
    let f = fixture(ServerConfig::default()).await;
    let mut c = RawClient::connect(addr(&f), "disk").await.unwrap();
    c.send(CMD_WRITE, 0, 9, 0, 4, b"held").await.unwrap();
    // Requests are read in order: once this fast read is answered, the slow write has been
    // read and started.
    assert_eq!(c.call(CMD_READ, 0, 2 * MIB, 8, &[]).await.unwrap().0, 0);
    let disk = f.disk.clone();
    let stopping = tokio::spawn(f.server.shutdown());
    assert_eq!(c.reply().await.unwrap(), (9, 0, vec![]));
    assert!(c.closed_by_server(Duration::from_secs(5)).await);
    stopping.await.unwrap();
    assert_eq!(&disk.contents()[0..4], b"held");
}

fn tool(name: &str) -> std::process::Command {
    // CI installs these (libnbd-bin, qemu-utils); a missing tool fails the test.
    let mut c = std::process::Command::new(name);
    c.stdin(std::process::Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_nbdinfo_and_qemu_io_against_the_memory_export() {
    for min in [1u32, 512, 4096] {
        let f = fixture(ServerConfig { min_block: min, ..ServerConfig::default() }).await;
        let uri = format!("nbd://{}/disk", addr(&f));
        let out = tokio::task::spawn_blocking({
            let uri = uri.clone();
            move || tool("nbdinfo").arg("--json").arg(&uri).output().unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success(), "nbdinfo: {}", String::from_utf8_lossy(&out.stderr));
        let info = String::from_utf8_lossy(&out.stdout);
        assert!(info.contains("\"export-size\": 4194304"), "{info}");
        assert!(info.contains(&format!("\"block_size_minimum\": {min}")), "{info}");
        // qemu-io: unaligned writes and reads, zeroes and discard (qemu aligns for itself
        // when the minimum is larger).
        let script = [
            "write -P 0x5a 2097000 5000",
            "read -P 0x5a 2097000 5000",
            "write -P 0x11 2101999 1",
            "read -P 0x5a 2097000 4999",
            "read -P 0x11 2101999 1",
            "write -z 2228224 8192",
            "read -P 0 2228224 8192",
            "discard 2359296 65536",
            "read -P 0 2359296 65536",
            "flush",
        ];
        let mut cmd = tool("qemu-io");
        cmd.args(["-f", "raw"]);
        for s in script {
            cmd.args(["-c", s]);
        }
        cmd.arg(&uri);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains("failed"), "qemu-io (min block {min}):\n{text}");
        let disk = f.disk.contents();
        assert!(disk[2097000..2101999].iter().all(|b| *b == 0x5a) && disk[2101999] == 0x11);
    }
}

#[tokio::test]
async fn a_panicking_export_answers_eio_and_flush_still_completes() {
    let f = fixture(ServerConfig::default()).await;
    let mut c = RawClient::connect(addr(&f), "disk").await.unwrap();
    c.send(CMD_WRITE, 0, 1, 3 * MIB + 65536, 4, b"boom").await.unwrap();
    c.send(CMD_FLUSH, 0, 2, 0, 0, &[]).await.unwrap();
    let mut replies = vec![c.reply().await.unwrap(), c.reply().await.unwrap()];
    replies.sort();
    assert_eq!(replies, vec![(1, EIO, vec![]), (2, 0, vec![])]);
    assert_eq!(c.call(CMD_READ, 0, 0, 8, &[]).await.unwrap().0, 0, "the connection still works");
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_stalled_clients() {
    let cfg = ServerConfig { shutdown_grace: Duration::from_millis(500), max_in_flight_units: 4, ..ServerConfig::default() };
    let f = fixture(cfg).await;
    // A write header whose payload never comes.
    let mut half = RawClient::connect(addr(&f), "disk").await.unwrap();
    half.stream
        .write_all(&tessera_nbd::request::encode_request(&tessera_nbd::request::RequestHeader {
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1,
            offset: 2 * MIB,
            len: 4096,
        }))
        .await
        .unwrap();
    // A client that pipelines large reads and never reads a reply (its socket buffers fill).
    let mut deaf = RawClient::connect(addr(&f), "disk").await.unwrap();
    for i in 0..64 {
        deaf.send(CMD_READ, 0, i, 2 * MIB, 1 << 20, &[]).await.unwrap();
    }
    // A client still haggling options.
    let _haggling = RawClient::greet(addr(&f)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(10), f.server.shutdown()).await.expect("shutdown hung on stalled clients");
}

#[tokio::test]
async fn larger_minimum_block_sizes_must_be_asked_for() {
    let f = fixture(ServerConfig { min_block: 4096, ..ServerConfig::default() }).await;
    let mut c = RawClient::greet(addr(&f)).await.unwrap();
    let r = c.option(OPT_GO, &go_data("disk", &[])).await.unwrap();
    assert_eq!(r.last().unwrap().0, REP_ERR_BLOCK_SIZE_REQD, "{r:?}");
    assert!(r.iter().any(|(t, d)| *t == REP_INFO && d[0..2] == INFO_BLOCK_SIZE.to_be_bytes()), "the sizes come with the refusal");
    // INFO without asking is fine; GO asking for the sizes enters transmission.
    assert_eq!(c.option(OPT_INFO, &go_data("disk", &[])).await.unwrap().last().unwrap().0, REP_ACK);
    assert_eq!(c.option(OPT_GO, &go_data("disk", &[INFO_BLOCK_SIZE])).await.unwrap().last().unwrap().0, REP_ACK);
    // EXPORT_NAME cannot learn the constraint: closed.
    let mut c = RawClient::greet(addr(&f)).await.unwrap();
    c.stream.write_all(&export_name_option("disk")).await.unwrap();
    assert!(c.closed_by_server(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let f = fixture(ServerConfig { max_connections: 2, ..ServerConfig::default() }).await;
    let mut a = RawClient::connect(addr(&f), "disk").await.unwrap();
    let _b = RawClient::connect(addr(&f), "disk").await.unwrap();
    assert!(RawClient::connect(addr(&f), "disk").await.is_err(), "a third connection was served");
    assert_eq!(a.call(CMD_READ, 0, 0, 8, &[]).await.unwrap().0, 0);
}
