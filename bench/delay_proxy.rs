//! A TCP relay that adds a fixed one-way delay in each direction: the
//! benchmark's stand-in for `tc qdisc ... netem delay` on kernels without
//! `sch_netem` (see BENCHMARKS.md, section e).
//!
//! ```sh
//! cargo run --release --example delay_proxy -- LISTEN_ADDR TARGET_ADDR DELAY_MS
//! ```
//!
//! Every chunk read from one side is written to the other `DELAY_MS` after
//! it arrived, in order, without holding back the chunks behind it: the link
//! has latency but no bandwidth limit, as `netem delay` without `rate`. A new
//! connection waits one round trip before it carries data, as a TCP handshake
//! across the link would. Prints `listening on ADDR` once it accepts.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, target, delay_ms] = args.as_slice() else {
        eprintln!("usage: delay_proxy LISTEN_ADDR TARGET_ADDR DELAY_MS");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(delay_ms.parse().unwrap_or_else(|_| {
        eprintln!("delay_proxy: DELAY_MS must be a whole number, not {delay_ms:?}");
        std::process::exit(2)
    }));
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (client, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(client, &target, delay).await {
                eprintln!("delay_proxy: connection to {target}: {e}");
            }
        });
    }
}

async fn relay(client: TcpStream, target: &str, delay: Duration) -> std::io::Result<()> {
    // The handshake's round trip across the emulated link.
    tokio::time::sleep(2 * delay).await;
    let server = TcpStream::connect(target).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(direction(cr, sw, delay));
    let down = tokio::spawn(direction(sr, cw, delay));
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Carries one direction: a reader stamps each chunk, a writer releases it
/// `delay` later. End of stream is delayed like data.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    // Bounded, so a slow receiver pushes back on the sender as TCP would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = tx.send((Instant::now() + delay, Vec::new())).await;
    });
    while let Some((due, chunk)) = rx.recv().await {
        sleep_until(due).await;
        if chunk.is_empty() || to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}
