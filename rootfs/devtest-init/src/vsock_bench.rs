//! `vsock` bench mode (`cocoon.vsock.bench_mib=N`): the guest listens on
//! `cocoon.vsock.listen` and serves throughput runs until the host says
//! `DONE`. Each host connection sends one command line:
//! - `RECV <bytes>`: the host sends that many bytes; the guest reads them
//!   all and answers `OK\n` (host→guest);
//! - `SEND <bytes>`: the guest sends that many bytes (guest→host);
//! - `DONE`: stop serving.
//!
//! The host side (tests/bench/vsock.py) times the runs; the same guest
//! serves the hybrid Unix socket and AF_VSOCK (QEMU vhost-vsock) peers.

use std::io::{Read, Write};

use crate::params::Params;
use crate::vsock::{accept, listen};

const CHUNK: usize = 256 * 1024;
const MAX_RUNS: usize = 1000;

fn read_line(conn: &mut std::fs::File) -> Result<String, String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match conn.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            Ok(_) => break,
            Err(e) => return Err(format!("reading a bench command: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn serve(conn: &mut std::fs::File, cmd: &str) -> Result<(), String> {
    let (verb, n) = cmd.split_once(' ').unwrap_or((cmd, "0"));
    let bytes: u64 = n.parse().map_err(|_| format!("bad bench size {n:?}"))?;
    let mut buf = vec![0x5au8; CHUNK];
    match verb {
        "RECV" => {
            let mut left = bytes;
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                let got = conn.read(&mut buf[..want]).map_err(|e| e.to_string())?;
                if got == 0 {
                    return Err(format!("host stopped with {left} bytes left"));
                }
                left -= got as u64;
            }
            conn.write_all(b"OK\n").map_err(|e| e.to_string())
        }
        "SEND" => {
            let mut left = bytes;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                conn.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                left -= n as u64;
            }
            Ok(())
        }
        other => Err(format!("unknown bench command {other:?}")),
    }
}

pub fn run(p: &Params) -> Result<String, String> {
    let port: u32 = p
        .require("vsock", "listen")?
        .parse()
        .map_err(|_| "cocoon.vsock.listen is not a number".to_string())?;
    let (fd, _listener) = listen(port)?;
    let mut runs = 0;
    while runs < MAX_RUNS {
        let mut conn = accept(fd)?;
        let cmd = read_line(&mut conn)?;
        if cmd == "DONE" {
            break;
        }
        serve(&mut conn, &cmd)?;
        runs += 1;
    }
    Ok(format!("served {runs} bench runs on port {port}"))
}
