//! hello: prints a fixed greeting, its argv and its whole environment to stdout, one line to stderr, and exits with
//! the code given as argv[1] (0 without one). Prints exactly what `tests/guests/c/hello.c` prints.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let mut out = std::io::stdout().lock();
    let mut text = String::from("hello from kiln\n");
    text += &format!("argc={}\n", args.len());
    for (i, arg) in args.iter().enumerate() {
        text += &format!("argv[{i}]={arg}\n");
    }
    for (i, (key, value)) in vars.iter().enumerate() {
        text += &format!("env[{i}]={key}={value}\n");
    }
    text += &format!("envc={}\n", vars.len());
    let greeting = std::env::var("KILN_GREETING").unwrap_or_else(|_| "(unset)".into());
    text += &format!("KILN_GREETING={greeting}\n");
    out.write_all(text.as_bytes()).expect("write stdout");
    out.flush().expect("flush stdout");
    eprintln!("hello: this line goes to stderr");
    let code = args.get(1).map_or(0, |a| a.parse::<i32>().unwrap_or(0));
    std::process::exit(code);
}
