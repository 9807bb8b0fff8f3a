//! panic_abort: built with `-C panic=abort` (by the harness, with rustc alone): a panic prints its message and
//! aborts, which raises SIGABRT. With `abort`, calls `std::process::abort()` instead.

#[inline(never)]
fn check_order(order: usize) -> usize {
    if order > 2 {
        panic!("order {order} is out of range");
    }
    order * 2
}

fn main() {
    println!("panic_abort: checking");
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("abort") {
        std::process::abort();
    }
    println!("{}", check_order(args.len() + 2));
}
