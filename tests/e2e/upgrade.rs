//! The binary upgrade (`kill -USR2`) on the real binary: the new process
//! takes the listening sockets over, the old one drains and exits, and not
//! one connection is refused or reset; a new process that cannot start
//! changes nothing.
//!
//! The processes after the first are not the test's children (each old
//! process starts the next), so they are followed by PID, from the log
//! lines the old processes write, and stopped by PID at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{
    kill, metric, nth_log, open_fds, reach, running, wait_gone, ConnectionLoop, Router, Started,
};
use clienthello::synth::HelloBuilder;

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 5s, connect: 2s, drain: 20s}}
routes:
  - name: a
    server_names: [a.test]
    upstreams: ["{upstream}"]
    health_check: false
"#
    )
}

/// Every 8-byte word is its index xor `seed`.
fn word(index: u64, seed: u64) -> [u8; 8] {
    (index ^ seed).to_le_bytes()
}

/// A tunnel streaming checksummed data both ways: the client writes
/// 16 KiB every 10 ms until told to stop, the upstream (`Greet`, then
/// echo) sends it back, and a reader checks every word. Returns the
/// bytes checked, or what went wrong.
fn tunnel(
    router: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(router).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&HelloBuilder::new("a.test").build())
            .map_err(|e| e.to_string())?;
        let mut greeting = String::new();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        reader.read_line(&mut greeting).map_err(|e| e.to_string())?;
        if greeting != "a\n" {
            return Err(format!("greeting {greeting:?}"));
        }
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || -> Result<u64, String> {
            let mut index = 0u64;
            let mut chunk = vec![0u8; 16 * 1024];
            while !stop.load(Ordering::SeqCst) {
                for c in chunk.chunks_exact_mut(8) {
                    c.copy_from_slice(&word(index, seed));
                    index += 1;
                }
                w.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
                std::thread::sleep(Duration::from_millis(10));
            }
            w.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            Ok(index * 8)
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending = Vec::new();
        let mut index = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("read after {} bytes: {e}", index * 8))?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            let whole = pending.len() / 8 * 8;
            for c in pending[..whole].chunks_exact(8) {
                if c != word(index, seed) {
                    return Err(format!("word {index} wrong"));
                }
                index += 1;
            }
            pending.drain(..whole);
        }
        let sent = writer.join().unwrap()?;
        if sent != index * 8 || !pending.is_empty() {
            return Err(format!("sent {sent} bytes, got back {}", index * 8));
        }
        Ok(sent)
    })
}

#[test]
fn three_upgrades_under_load_refuse_nothing_and_keep_tunnels_intact() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let started = Started::default();
    let mut router = Router::start(&config(up.addr));
    let addr = router.addr();
    let hello = HelloBuilder::new("a.test").build();
    let first_fds = open_fds(router.pid());

    // About 100 connections a second, each one checked.
    let load = ConnectionLoop::start(addr, &hello, "a", 1, Duration::from_millis(10));
    let stop_tunnels = Arc::new(AtomicBool::new(false));
    let tunnels: Vec<_> = (0..10)
        .map(|i| tunnel(addr, 0x5eed_0000 + i, stop_tunnels.clone()))
        .collect();

    let mut pids = vec![router.pid()];
    for n in 1..=3 {
        let before = load.ok();
        kill("USR2", *pids.last().unwrap());
        let ready = nth_log(
            &router,
            "upgrade: the new process is ready; this one stops accepting and drains",
            n,
        );
        let pid = ready["new_pid"].as_u64().unwrap() as u32;
        started.0.lock().unwrap().push(pid);
        pids.push(pid);
        // Served on, by the new process, before the next upgrade.
        load.wait_ok(before + 50);
    }
    let (ok, failed) = load.stop();
    stop_tunnels.store(true, Ordering::SeqCst);
    for (i, t) in tunnels.into_iter().enumerate() {
        let sent = t
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("tunnel {i}: {e}"));
        assert!(sent > 0, "tunnel {i} moved nothing");
    }
    assert!(
        failed.is_empty(),
        "{} refused or failed: {failed:?}",
        failed.len()
    );
    assert!(ok >= 150);

    // The old processes drain and exit, with nothing left open.
    assert_eq!(router.wait_exit(Duration::from_secs(30)), Some(0));
    for pid in &pids[..3] {
        wait_gone(*pid, Duration::from_secs(30));
        assert_eq!(open_fds(*pid), 0, "process {pid} left descriptors");
    }
    // The newest one serves, owns the admin endpoint, and counts itself.
    let last = pids[3];
    assert!(running(last));
    assert_eq!(reach(addr, &hello).unwrap(), "a");
    // It holds what the first one held at rest: nothing of the old
    // processes leaked into it (its connections close as their peers do).
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(last) > first_fds {
        assert!(
            Instant::now() < deadline,
            "{} descriptors open in the new process, {first_fds} in the first: {:?}",
            open_fds(last),
            std::fs::read_dir(format!("/proc/{last}/fd"))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = router.metrics();
    assert_eq!(
        metric(&m, "sniroute_upgrades_total", &[("result", "success")]),
        Some(1.0)
    );
    assert!(metric(&m, "process_start_time_seconds", &[]).is_some());
    kill("TERM", last);
    wait_gone(last, Duration::from_secs(30));
}

#[test]
fn a_new_process_with_a_broken_config_changes_nothing() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let started = Started::default();
    let router = Router::start(&config(up.addr));
    let hello = HelloBuilder::new("a.test").build();
    std::fs::write(&router.config_path, "listeners: [").unwrap();
    router.signal("USR2");
    let spawned = nth_log(&router, "upgrade: new process started", 1);
    let new_pid = spawned["new_pid"].as_u64().unwrap() as u32;
    started.0.lock().unwrap().push(new_pid);
    let failed = nth_log(&router, "upgrade failed; this process keeps serving", 1);
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("exited with status 1")),
        "{failed}"
    );
    // The new process is gone (reaped: not even a zombie), the old one
    // serves as before, and counts the failure.
    assert!(!std::path::Path::new(&format!("/proc/{new_pid}")).exists());
    assert_eq!(reach(router.addr(), &hello).unwrap(), "a");
    assert_eq!(router.admin_get("/readyz").0, 200);
    assert_eq!(
        metric(
            &router.metrics(),
            "sniroute_upgrades_total",
            &[("result", "failure")]
        ),
        Some(1.0)
    );
    // No stray child of the router.
    let children: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .nth(1)
                .is_some_and(|ppid| ppid == router.pid().to_string())
        })
        .collect();
    assert!(children.is_empty(), "children left: {children:?}");
}

/// `sniroute upgrade`: sends the signal and reports the outcome it reads
/// on the admin endpoint: the new PID, or a failure (the old process
/// serving on); and sends nothing to a PID that is not the admin's.
#[test]
fn the_upgrade_command_follows_the_outcome() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let started = Started::default();
    let hello = HelloBuilder::new("a.test").build();
    let upgrade = |admin: SocketAddr, pid: Option<u32>| {
        let mut cmd = Command::new(crate::common::bin());
        cmd.args(["upgrade", "--admin", &admin.to_string(), "--timeout", "60s"]);
        if let Some(pid) = pid {
            cmd.args(["--pid", &pid.to_string()]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // A new binary that cannot start: reported, and the old one serves on.
    let mut failing = Router::spawn(&config(up.addr), |cmd| {
        cmd.args(["--upgrade-binary", "/bin/false"]);
    });
    failing.wait_ready();
    let admin = failing.admin.unwrap();
    let (code, _, err) = upgrade(admin, Some(failing.pid()));
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "sniroute upgrade: the upgrade failed; PID {} keeps serving (its log says why)\n",
            failing.pid()
        )
    );
    assert_eq!(reach(failing.addr(), &hello).unwrap(), "a");
    // The wrong PID: nothing is sent.
    let (code, _, err) = upgrade(admin, Some(1));
    assert_eq!(code, Some(1));
    assert!(err.contains("not by PID 1: nothing sent"), "{err}");
    assert_eq!(
        failing
            .logs()
            .iter()
            .filter(|l| l["message"] == "SIGUSR2: upgrading the binary")
            .count(),
        1
    );
    drop(failing);

    // A good one: the new PID is reported once it serves the admin port.
    let mut router = Router::start(&config(up.addr));
    let old = router.pid();
    let (code, out, err) = upgrade(router.admin.unwrap(), None);
    assert_eq!(code, Some(0), "{err}");
    let spawned = nth_log(&router, "upgrade: new process started", 1);
    let new_pid = spawned["new_pid"].as_u64().unwrap() as u32;
    started.0.lock().unwrap().push(new_pid);
    assert!(
        out.starts_with(&format!(
            "upgraded: PID {new_pid} took over from PID {old} (sniroute "
        )),
        "{out}"
    );
    assert_eq!(router.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(reach(router.addr(), &hello).unwrap(), "a");
    let (_, body) = crate::common::http_get(router.admin.unwrap(), "/status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["pid"], new_pid);
}
