//! containerd-shim-kiln-v2: containerd's runtime `io.containerd.kiln.v2`, which runs each container as a Kiln VM.
//! containerd starts it as a shim v2 (`start`, `delete`, or serving the task API on its socket); the shim starts
//! itself again as `containerd-shim-kiln-v2 vm SPEC ...` for each container's VM (`vm.rs`), whose pid is the task's.

mod bundle;
mod console;
mod mounts;
mod netlink;
mod podnet;
mod service;
mod stats;
mod task;
mod terminal;
mod vm;
mod writable;

/// The runtime's name in containerd's configuration.
const RUNTIME_ID: &str = "io.containerd.kiln.v2";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|mode| mode == "vm") {
        std::process::exit(match vm::VmArgs::parse(&args[2..]) {
            Ok(vm_args) => vm::main(&vm_args),
            Err(e) => {
                eprintln!("containerd-shim-kiln-v2 vm: {e}");
                vm::KILN_ERROR
            }
        });
    }
    containerd_shim::run::<service::Service>(RUNTIME_ID, None);
}
