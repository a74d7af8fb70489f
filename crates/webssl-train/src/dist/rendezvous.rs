//! Handing rank 0's NCCL id to every rank over TCP, the way torchrun-style launchers connect processes:
//! rank 0 listens on `MASTER_ADDR:port`, the others connect, say who they are, and receive the bytes.
//! Used by the NCCL engine when no MPI world exists (torchrun, or `srun` without `--mpi`); under an
//! MPI launcher the id goes through an MPI broadcast instead.
//!
//! **Which port.** `WEBSSL_RDZV_PORT` when set; otherwise `MASTER_PORT`, except under torchrun, whose
//! agent already serves its own store on `MASTER_PORT` (it exports `TORCHELASTIC_USE_AGENT_STORE`):
//! there `MASTER_PORT + 1`. Rank 0 binds every interface on that port.
//!
//! **Checked, bounded.** Each rank sends a magic, the protocol version, its rank and its world size;
//! rank 0 refuses (and tells the rank why) a world size that differs from its own, a rank out of
//! range or a rank that connects twice, and every rank gives up with an error naming the address
//! after the collective timeout (`WEBSSL_COLLECTIVE_TIMEOUT`) rather than waiting for ever.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{Result, TrainError};

const MAGIC: &[u8; 4] = b"WSRV";
const VERSION: u32 = 1;
/// The largest payload accepted (an NCCL id is 128 bytes).
const MAX_PAYLOAD: u32 = 1 << 20;

/// Where the rendezvous happens, read from the launcher's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousEnv {
    /// `MASTER_ADDR` (host name or address of rank 0).
    pub addr: String,
    pub port: u16,
}

impl RendezvousEnv {
    /// Reads `MASTER_ADDR`, `MASTER_PORT`, `WEBSSL_RDZV_PORT` and `TORCHELASTIC_USE_AGENT_STORE`
    /// from `get` (see the module docs); a missing or malformed variable is an error naming it.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let need = |k: &str| {
            get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).ok_or_else(|| {
                TrainError::config(
                    k,
                    format!(
                        "{k} is not set: multi-process GPU training without an MPI launcher meets \
                         at MASTER_ADDR:MASTER_PORT (torchrun sets both; under srun export them, e.g. \
                         MASTER_ADDR=$(scontrol show hostnames | head -n1) MASTER_PORT=29500), or \
                         start the ranks with `webssl launch` / mpirun"
                    ),
                )
            })
        };
        let port_of = |k: &str, v: &str| -> Result<u16> {
            v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                TrainError::config(k, format!("{k}=`{v}` is not a TCP port (1-65535)"))
            })
        };
        let addr = need("MASTER_ADDR")?;
        let port = match get("WEBSSL_RDZV_PORT").map(|v| v.trim().to_string()) {
            Some(v) if !v.is_empty() => port_of("WEBSSL_RDZV_PORT", &v)?,
            _ => {
                let master = port_of("MASTER_PORT", &need("MASTER_PORT")?)?;
                let agent_store = get("TORCHELASTIC_USE_AGENT_STORE")
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1");
                if agent_store {
                    master.checked_add(1).ok_or_else(|| {
                        TrainError::config(
                            "MASTER_PORT",
                            "MASTER_PORT=65535 leaves no port above it for webssl's rendezvous under \
                             torchrun; set WEBSSL_RDZV_PORT",
                        )
                    })?
                } else {
                    master
                }
            }
        };
        Ok(RendezvousEnv { addr, port })
    }
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> TrainError {
    TrainError::Distributed(format!("rendezvous: {what}: {e}"))
}

/// Rank 0: serves `payload` to the `world - 1` other ranks that connect to `listener`, checking who
/// they are; returns once every rank has it. Errors after `timeout` without all of them.
pub fn serve(
    listener: &TcpListener,
    world: usize,
    payload: &[u8],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let local = listener.local_addr().map_err(|e| io_err("listener", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("listener", e))?;
    let mut seen = vec![false; world];
    seen[0] = true;
    let mut joined = 1;
    while joined < world {
        let (mut s, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (0..world).filter(|&r| !seen[r]).collect();
                    return Err(TrainError::Distributed(format!(
                        "rendezvous on {local}: rank(s) {missing:?} did not connect within {:.0} s \
                         (WEBSSL_COLLECTIVE_TIMEOUT); check MASTER_ADDR/MASTER_PORT on every rank",
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(io_err(format!("accepting on {local}"), e)),
        };
        s.set_nonblocking(false).map_err(|e| io_err(peer, e))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| io_err(peer, e))?;
        let mut hello = [0u8; 16];
        if let Err(e) = s.read_exact(&mut hello) {
            // Not one of ours (a port scanner, a health check): ignore it and keep serving.
            tracing::warn!("rendezvous: ignoring a connection from {peer}: {e}");
            continue;
        }
        let word = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().unwrap()) as usize;
        let refusal = if &hello[0..4] != MAGIC || word(4) != VERSION as usize {
            Some(format!(
                "{peer} is not a webssl rank of this version (protocol {VERSION})"
            ))
        } else if word(12) != world {
            Some(format!(
                "rank {} says the world has {} processes, rank 0 says {world}: every rank must get the \
                 same WORLD_SIZE",
                word(8),
                word(12)
            ))
        } else if word(8) == 0 || word(8) >= world {
            Some(format!(
                "rank {} is not a rank of a world of {world}",
                word(8)
            ))
        } else if seen[word(8)] {
            Some(format!(
                "rank {} connected twice: two processes got the same RANK",
                word(8)
            ))
        } else {
            None
        };
        match refusal {
            Some(msg) => {
                let _ = send_frame(&mut s, 1, msg.as_bytes());
                if &hello[0..4] != MAGIC {
                    tracing::warn!("rendezvous: {msg}");
                    continue;
                }
                return Err(TrainError::Distributed(format!("rendezvous: {msg}")));
            }
            None => {
                send_frame(&mut s, 0, payload).map_err(|e| io_err(peer, e))?;
                seen[word(8)] = true;
                joined += 1;
            }
        }
    }
    Ok(())
}

fn send_frame(s: &mut TcpStream, status: u8, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(status);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame)?;
    s.flush()
}

/// Rank `rank` (≥ 1): connects to rank 0 at `addr:port` (retrying while rank 0 is not up yet), says
/// who it is and returns rank 0's payload. Errors after `timeout`, or with rank 0's refusal.
pub fn join(
    addr: &str,
    port: u16,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let target = format!("{addr}:{port}");
    let mut last_err = String::from("no attempt");
    let mut s = loop {
        // Resolved on every attempt: a host name may not resolve yet while the job starts.
        let addrs: Vec<SocketAddr> = match target.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last_err = format!("resolving {target}: {e}");
                Vec::new()
            }
        };
        let connected = addrs.iter().find_map(|a| {
            TcpStream::connect_timeout(a, Duration::from_secs(2))
                .map_err(|e| last_err = format!("{a}: {e}"))
                .ok()
        });
        if let Some(s) = connected {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(TrainError::Distributed(format!(
                "rendezvous: rank {rank} could not reach rank 0 at {target} within {:.0} s \
                 (WEBSSL_COLLECTIVE_TIMEOUT): {last_err}. Is MASTER_ADDR rank 0's host, and is rank 0 \
                 running?",
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    s.set_read_timeout(Some(left))
        .map_err(|e| io_err(&target, e))?;
    let mut hello = Vec::with_capacity(16);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world as u32).to_le_bytes());
    s.write_all(&hello).map_err(|e| io_err(&target, e))?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head)
        .map_err(|e| io_err(format!("waiting for rank 0 at {target}"), e))?;
    let len = u32::from_le_bytes(head[1..5].try_into().unwrap());
    if len > MAX_PAYLOAD {
        return Err(TrainError::Distributed(format!(
            "rendezvous: {target} sent {len} bytes, more than any webssl rank 0 sends"
        )));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)
        .map_err(|e| io_err(format!("reading from {target}"), e))?;
    if head[0] != 0 {
        return Err(TrainError::Distributed(format!(
            "rendezvous: rank 0 refused rank {rank}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(body)
}

/// The whole exchange for this process: rank 0 binds the port and serves `make_payload()`, the others
/// join; every rank returns the payload.
pub fn exchange(
    env: &RendezvousEnv,
    rank: usize,
    world: usize,
    timeout: Duration,
    make_payload: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    if rank != 0 {
        return join(&env.addr, env.port, rank, world, timeout);
    }
    let listener = TcpListener::bind(("0.0.0.0", env.port)).map_err(|e| {
        io_err(
            format!(
                "rank 0 binding port {} (MASTER_PORT, or WEBSSL_RDZV_PORT to pick another)",
                env.port
            ),
            e,
        )
    })?;
    let payload = make_payload()?;
    serve(&listener, world, &payload, timeout)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::test_env as env;

    #[test]
    fn env_picks_the_port_as_documented() {
        let e =
            RendezvousEnv::from_lookup(env(&[("MASTER_ADDR", "node1"), ("MASTER_PORT", "29500")]))
                .unwrap();
        assert_eq!((e.addr.as_str(), e.port), ("node1", 29500));
        // torchrun's agent holds MASTER_PORT itself.
        let e = RendezvousEnv::from_lookup(env(&[
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]))
        .unwrap();
        assert_eq!(e.port, 29501);
        let e = RendezvousEnv::from_lookup(env(&[
            ("MASTER_ADDR", "10.0.0.1"),
            ("WEBSSL_RDZV_PORT", "4000"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]))
        .unwrap();
        assert_eq!(e.port, 4000);
    }

    #[test]
    fn env_errors_name_the_variable() {
        let msg = |pairs: &[(&str, &str)]| {
            RendezvousEnv::from_lookup(env(pairs))
                .unwrap_err()
                .to_string()
        };
        let m = msg(&[("MASTER_PORT", "29500")]);
        assert!(
            m.contains("MASTER_ADDR is not set") && m.contains("srun"),
            "{m}"
        );
        let m = msg(&[("MASTER_ADDR", "a")]);
        assert!(m.contains("MASTER_PORT is not set"), "{m}");
        let m = msg(&[("MASTER_ADDR", "a"), ("MASTER_PORT", "http")]);
        assert!(m.contains("MASTER_PORT=`http`"), "{m}");
        let m = msg(&[("MASTER_ADDR", "a"), ("WEBSSL_RDZV_PORT", "0")]);
        assert!(m.contains("WEBSSL_RDZV_PORT=`0`"), "{m}");
    }

    /// A free loopback port (bound then released; the race with other tests is harmless: a rank 0
    /// that cannot bind fails the test loudly).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn four_ranks_receive_rank_0s_id() {
        let env = RendezvousEnv {
            addr: "127.0.0.1".into(),
            port: free_port(),
        };
        let id: Vec<u8> = (0..128u8).collect();
        let t = Duration::from_secs(20);
        // Ranks 1..4 start before rank 0 is listening: they must retry.
        let others: Vec<_> = (1..4)
            .map(|r| {
                let env = env.clone();
                std::thread::spawn(move || exchange(&env, r, 4, t, || unreachable!()))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let expect = id.clone();
        let got0 = exchange(&env, 0, 4, t, move || Ok(id)).unwrap();
        assert_eq!(got0, expect);
        for h in others {
            assert_eq!(h.join().unwrap().unwrap(), expect);
        }
    }

    #[test]
    fn a_world_size_mismatch_is_refused_with_the_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Duration::from_secs(10);
        let rank1 = std::thread::spawn(move || join("127.0.0.1", port, 1, 3, t));
        let served = serve(&listener, 2, b"id", t).unwrap_err().to_string();
        assert!(
            served.contains("3 processes") && served.contains("says 2"),
            "{served}"
        );
        let joined = rank1.join().unwrap().unwrap_err().to_string();
        assert!(joined.contains("refused rank 1"), "{joined}");
    }

    #[test]
    fn a_stranger_is_ignored_and_a_missing_rank_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stranger = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        });
        let e = serve(&listener, 2, b"id", Duration::from_millis(800))
            .unwrap_err()
            .to_string();
        stranger.join().unwrap();
        assert!(e.contains("rank(s) [1] did not connect"), "{e}");
        // And a rank with nobody listening gives up naming the address.
        let e = join("127.0.0.1", free_port(), 1, 2, Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not reach rank 0 at 127.0.0.1:"), "{e}");
    }
}
