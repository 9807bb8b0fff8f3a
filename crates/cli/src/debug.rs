//! `kiln debug INSTANCE`: gdb for a running instance of `kiln run -d` or of kilnd (whose VMs have the same socket in
//! their folder: kilnd is not in the way). This process listens for gdb and accepts its
//! connection, then hands the connection to the instance's VMM over the socket in its folder (`kiln_vmm::debug::
//! attach`), which stops the program and serves gdb until it detaches; the program then runs on. This process ends
//! once the VMM has taken the connection.

use anyhow::{bail, Context, Result};
use kiln_image::instance::{Instances, State};
use kiln_launch::home;
use kiln_vmm::debug::attach;
use std::net::{SocketAddr, TcpListener};

#[derive(clap::Args)]
pub struct DebugArgs {
    /// The TCP address to wait for gdb on (port 0: any free port, printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The instance: a name or an id
    #[arg(value_name = "INSTANCE")]
    instance: String,
}

pub fn debug(args: DebugArgs) -> Result<u8> {
    let store = home::store()?;
    let instances = Instances::new(&store);
    let instance = instances.find(&args.instance)?;
    let name = &instance.name;
    if instance.state != State::Running || !instance.vmm_alive() {
        bail!("instance {name} is not running");
    }
    let socket = attach::connect(&instances.dir(&instance.id)).with_context(|| format!("instance {name}"))?;
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let addr = listener.local_addr().context("cannot read the address gdb is awaited on")?;
    errln!("kiln: waiting for gdb on {addr} to debug instance {name} (gdb PROGRAM -ex 'target remote {addr}')");
    let (conn, _) = listener.accept().context("cannot accept gdb's connection")?;
    attach::hand_over(&socket, &conn).with_context(|| format!("instance {name}"))?;
    errln!("kiln: gdb attached to instance {name}");
    Ok(0)
}
