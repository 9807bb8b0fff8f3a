//! A tokio multi-thread runtime on Kiln: 10,000 tasks sending through a channel (some sleeping first), timers,
//! spawn_blocking. Prints a summary and exits 0 when every result is right.

use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(100);
    let tasks: Vec<_> = (0..10_000u64)
        .map(|i| {
            let tx = tx.clone();
            tokio::spawn(async move {
                if i % 1000 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tx.send(i).await.unwrap();
                i
            })
        })
        .collect();
    drop(tx);
    let mut received = 0u64;
    while let Some(v) = rx.recv().await {
        received += v;
    }
    let mut joined = 0u64;
    for task in tasks {
        joined += task.await.unwrap();
    }
    let blocking = tokio::task::spawn_blocking(|| (0..1000u64).sum::<u64>()).await.unwrap();
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let slept = start.elapsed() >= Duration::from_millis(20);
    let timed_out = tokio::time::timeout(Duration::from_millis(10), std::future::pending::<()>()).await.is_err();
    println!("tokio: received={received} joined={joined} blocking={blocking} slept={slept} timed_out={timed_out}");
    let ok = received == 49_995_000 && joined == 49_995_000 && blocking == 499_500 && slept && timed_out;
    std::process::exit(if ok { 0 } else { 1 });
}
