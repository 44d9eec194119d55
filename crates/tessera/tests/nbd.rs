//! The NBD front end end to end: a mon and three OSDs as processes, `tessera nbd` as a
//! process, and real NBD clients (nbdinfo, qemu-img, qemu-io, nbdcopy, fio's nbd engine).
//! Also `tessera up`, started, used, stopped with Ctrl-C and started again.

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_client::{Client, ClientOptions};
use tessera_nbd::volume::VolumeExport;
use tessera_testkit::cluster::TestCluster;
use tessera_testkit::free_loopback_port;
use tessera_testkit::process::Daemon;

mod common;

use common::{image, run_ok, start_nbd, BIN};

#[test]
fn real_nbd_clients_read_and_write_a_replicated_volume() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(BIN, dir.path(), Default::default());
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "16"]);
    cluster.cli_ok(&["volume", "create", "vol", "--size", "64M", "--object-size", "1M"]);
    cluster.cli_ok(&["volume", "create", "fio", "--size", "32M"]);
    let (nbd, port) = start_nbd(&cluster, dir.path(), &[]);
    let uri = format!("nbd://127.0.0.1:{port}/vol");

    // nbdinfo: the export, its size and flags; the list names both volumes.
    let info = run_ok("nbdinfo", &["--json", &uri]);
    assert!(info.contains("\"export-size\": 67108864"), "{info}");
    for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"] {
        assert!(info.contains(&format!("\"{flag}\": true")), "{flag}: {info}");
    }
    let list = run_ok("nbdinfo", &["--list", &format!("nbd://127.0.0.1:{port}")]);
    assert!(list.contains("export=\"vol\"") && list.contains("export=\"fio\""), "{list}");

    // qemu-img convert an image in, qemu-img compare it back.
    let img = dir.path().join("in.raw");
    let content = image(24 << 20, 7);
    std::fs::write(&img, &content).unwrap();
    let img_s = img.display().to_string();
    run_ok("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", &img_s, &uri]);
    let cmp = run_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", &img_s, &uri]);
    assert!(cmp.contains("Images are identical"), "{cmp}");

    // nbdcopy the whole volume out (several connections: CAN_MULTI_CONN) and compare.
    let out = dir.path().join("out.raw");
    run_ok("nbdcopy", &[&uri, &out.display().to_string()]);
    let copied = std::fs::read(&out).unwrap();
    assert_eq!(copied.len(), 64 << 20);
    assert!(copied[..content.len()] == content[..], "nbdcopy read back different data");
    assert!(copied[content.len()..].iter().all(|b| *b == 0));

    // qemu-io: aligned and unaligned writes and reads, write-zeroes and discard read back
    // as zeros; FUA writes and flush succeed.
    let script = [
        "write -P 0xa1 33554432 1048576",
        "write -P 0xb2 33555000 3333",
        "write -P 0xc3 -f 34603007 9",
        "read -P 0xa1 33554432 568",
        "read -P 0xb2 33555000 3333",
        "read -P 0xa1 33558333 1044099",
        "read -P 0xc3 34603007 9",
        "write -z 33619968 65536",
        "read -P 0 33619968 65536",
        "discard 33816576 131072",
        "read -P 0 33816576 131072",
        "write -z -u 35651584 12345",
        "read -P 0 35651584 12345",
        "flush",
    ];
    let mut args = vec!["-f", "raw"];
    for s in &script {
        args.extend(["-c", s]);
    }
    args.push(&uri);
    let out = run_ok("qemu-io", &args);
    assert!(!out.contains("failed"), "{out}");

    // A connection sending garbage is closed; the server keeps serving.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        s.write_all(&[0xde; 64]).unwrap();
        // Closed: EOF, or a reset because the server closed with our garbage unread. A
        // timeout means the server kept the connection.
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "the server did not close the garbage connection: {e}"),
        }
    }
    let out2 = dir.path().join("out2.raw");
    run_ok("nbdcopy", &[&uri, &out2.display().to_string()]);
    assert!(std::fs::read(&out2).unwrap()[..content.len()] == content[..], "the image changed");

    // fio with the nbd engine: random writes, then every block verified by crc32c.
    let fio_uri = format!("nbd://127.0.0.1:{port}/fio");
    let out = run_ok(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={fio_uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=16M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=terse",
            "--terse-version=3",
        ],
    );
    // Terse v3: field 5 is the error code of the job.
    let line = out.lines().find(|l| l.starts_with("3;")).unwrap_or_else(|| panic!("no terse line:\n{out}"));
    assert_eq!(line.split(';').nth(4), Some("0"), "fio reported an error:\n{out}");

    // A resize is seen by the next connection.
    cluster.cli_ok(&["volume", "resize", "vol", "--size", "96M"]);
    let info = run_ok("nbdinfo", &["--size", &uri]);
    assert_eq!(info.trim(), (96u64 << 20).to_string());
    assert!(nbd.log().contains("serving volumes"), "{}", nbd.log());
}

#[test]
fn tessera_volumes_pass_the_export_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(BIN, dir.path(), Default::default());
    cluster.cli_ok(&["pool", "create", "default", "--pg-count", "8"]);
    cluster.cli_ok(&["volume", "create", "c", "--size", "8M", "--object-size", "64K"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::connect(&[cluster.mon_addr()], ClientOptions::default()).await.unwrap();
        let export = VolumeExport::new(client.open_volume("c").await.unwrap());
        // 512 KiB spans 8 objects of 64 KiB, so ranges cross object boundaries.
        tessera_nbd::conformance::check(&export, 512 * 1024, 150, 42).await.unwrap();
    });
}

/// Waits until `file` contains `needle`; returns the contents.
fn wait_output(file: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} after {timeout:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tessera_up_serves_a_volume_stops_on_ctrl_c_and_brings_the_data_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // `tessera up` binds three consecutive OSD ports: pick a base whose next two are free
    // too (other tests start daemons on loopback ports at the same time).
    let osd = loop {
        let p = free_loopback_port();
        if p < u16::MAX - 2 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let (mon, nbd) = (free_loopback_port(), free_loopback_port());
    let args: Vec<String> = [
        "up",
        "--data",
        &data.display().to_string(),
        "--osd-size",
        "256M",
        "--volume-size",
        "64M",
        "--mon-listen",
        &format!("127.0.0.1:{mon}"),
        "--osd-port",
        &osd.to_string(),
        "--nbd-listen",
        &format!("127.0.0.1:{nbd}"),
        "--pg-count",
        "8",
        "--status-every",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The default export (empty name) is the created volume.
    let uri = format!("nbd://127.0.0.1:{nbd}");
    let log = dir.path().join("up.log");
    for round in 0..2 {
        let _ = std::fs::remove_file(&log);
        let mut up = Daemon::start("up", BIN, args.clone(), vec![], dir.path());
        wait_output(&log, "tessera is up", Duration::from_secs(60));
        wait_output(&log, "8 active+clean", Duration::from_secs(60));
        let text = std::fs::read_to_string(&log).unwrap();
        for hint in ["nbdinfo nbd://", "qemu-img convert", "nbdcopy", "fio --name", "Ctrl-C"] {
            assert!(text.contains(hint), "banner lacks {hint:?}:\n{text}");
        }
        if round == 0 {
            run_ok("qemu-io", &["-f", "raw", "-c", "write -P 0x42 4096000 100000", "-c", "flush", &uri]);
        }
        let out = run_ok("qemu-io", &["-f", "raw", "-c", "read -P 0x42 4096000 100000", &uri]);
        assert!(!out.contains("failed"), "round {round}: {out}");
        let status = up.signal_and_wait(libc::SIGINT, Duration::from_secs(60));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(status.is_some_and(|s| s.success()), "round {round}: Ctrl-C did not stop cleanly ({status:?}):\n{text}");
        assert!(text.contains("stopped. Data is kept in"), "{text}");
    }
}
