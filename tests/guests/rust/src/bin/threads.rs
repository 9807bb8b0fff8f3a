//! std::thread on Kiln: 64 threads with Mutex, Barrier, RwLock and mpsc; Condvar with a sleeping notifier; scoped
//! threads; a panicking thread joined as an error. Prints a summary and exits 0 when every result is right.

use std::sync::{mpsc, Arc, Barrier, Condvar, Mutex, RwLock};
use std::thread;
use std::time::Duration;

fn main() {
    let n = 64;
    let counter = Arc::new(Mutex::new(0u64));
    let barrier = Arc::new(Barrier::new(n));
    let seen = Arc::new(RwLock::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (counter, barrier, seen, tx) = (counter.clone(), barrier.clone(), seen.clone(), tx.clone());
            thread::spawn(move || {
                for _ in 0..100 {
                    *counter.lock().unwrap() += 1;
                }
                barrier.wait();
                seen.write().unwrap().push(i);
                assert!(!seen.read().unwrap().is_empty());
                tx.send(i as u64).unwrap();
                i * 2
            })
        })
        .collect();
    drop(tx);
    let messages: u64 = rx.iter().sum();
    let returned: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();

    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let notifier = {
        let pair = pair.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            *pair.0.lock().unwrap() = true;
            pair.1.notify_one();
        })
    };
    let mut ready = pair.0.lock().unwrap();
    while !*ready {
        ready = pair.1.wait(ready).unwrap();
    }
    drop(ready);
    notifier.join().unwrap();

    let scoped: u64 = thread::scope(|s| {
        let hs: Vec<_> = (0..4u64).map(|i| s.spawn(move || i * 10)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let panicked = thread::spawn(|| panic!("expected panic in a thread")).join().is_err();

    let count = *counter.lock().unwrap();
    let ok = count == 6400 && messages == 2016 && returned == 4032 && scoped == 60 && panicked;
    println!("threads: counter={count} messages={messages} returned={returned} scoped={scoped} panicked={panicked}");
    std::process::exit(if ok { 0 } else { 1 });
}
