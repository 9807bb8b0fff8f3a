//! `kiln service`: services through kilnd's API (`/services`, docs/api.md). A service needs kilnd: without one
//! answering, these commands say so.

use crate::output::print_table;
use anyhow::{bail, Context, Result};
use kiln_image::health::HealthCheck;
use kilnd::api::Size;
use kilnd::client::Client;
use kilnd::service::{Phase, ServiceRequest, ServiceStatus, ServiceUpdate};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum ServiceCommand {
    /// Start REPLICAS instances of an image behind published ports that kilnd balances
    Create(CreateArgs),
    /// Roll out a new version (--image, --env, ARGS), a batch at a time; or change the count (--replicas)
    Update(UpdateArgs),
    /// Go back to the version before the last update
    Rollback(NameArgs),
    /// List services
    Ls(LsArgs),
    /// List a service's replicas
    Ps(NameArgs),
    /// Remove services: their ports closed, their replicas drained and stopped
    Rm(RmArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The service's name
    name: String,
    /// An image (NAME[:TAG] or id) or the path of a Linux x86-64 executable
    #[arg(long)]
    image: String,
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Publish a port: kilnd listens on HOST_PORT and balances connections across the replicas' PORT
    #[arg(short = 'p', long = "publish", value_name = "[HOST_IP:]HOST_PORT:PORT")]
    publish: Vec<String>,
    #[command(flatten)]
    template: TemplateArgs,
    /// Each replica's health check, to a published host port: http:HOST_PORT/PATH or tcp:HOST_PORT
    #[arg(long, value_name = "CHECK")]
    health_check: Option<String>,
    /// Milliseconds between health checks
    #[arg(long, requires = "health_check", value_name = "MS", default_value_t = 30_000)]
    health_interval: u64,
    /// Milliseconds a health check may take
    #[arg(long, requires = "health_check", value_name = "MS", default_value_t = 5_000)]
    health_timeout: u64,
    /// Failed health checks in a row that make a replica unhealthy
    #[arg(long, requires = "health_check", value_name = "N", default_value_t = 3)]
    health_retries: u32,
    #[command(flatten)]
    policy: PolicyArgs,
    /// The program's arguments, instead of the image's
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
struct TemplateArgs {
    /// Guest memory of each replica (e.g. 64M)
    #[arg(short, long)]
    memory: Option<String>,
    /// KEY=VALUE, added to the image's environment
    #[arg(short, long)]
    env: Vec<String>,
}

#[derive(clap::Args)]
struct PolicyArgs {
    /// Replicas an update may start above the count
    #[arg(long, value_name = "N")]
    max_surge: Option<u32>,
    /// Replicas an update may leave not ready below the count
    #[arg(long, value_name = "N")]
    max_unavailable: Option<u32>,
    /// Milliseconds a new replica has to become healthy before the update fails and rolls back
    #[arg(long, value_name = "MS")]
    monitor: Option<u64>,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    name: String,
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    replicas: Option<u32>,
    #[command(flatten)]
    template: TemplateArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Return at once instead of waiting for the update to end
    #[arg(short, long)]
    detach: bool,
    /// The program's arguments, instead of the current version's
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
pub struct NameArgs {
    name: String,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// table or json
    #[arg(short, long, default_value = "table")]
    output: String,
}

#[derive(clap::Args)]
pub struct RmArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(command: ServiceCommand) -> Result<u8> {
    let Some(client) = crate::kilnd_client::answering() else {
        bail!("services run in kilnd, and none answers: start it (kiln daemon)");
    };
    match command {
        ServiceCommand::Create(args) => create(&client, args),
        ServiceCommand::Update(args) => update(&client, args),
        ServiceCommand::Rollback(args) => {
            let name = segment(&args.name)?;
            client.request("POST", &format!("/services/{name}/rollback"), None)?;
            wait(&client, name)
        }
        ServiceCommand::Ls(args) => ls(&client, &args.output),
        ServiceCommand::Ps(args) => ps(&client, &args.name),
        ServiceCommand::Rm(args) => {
            for name in &args.names {
                client.request("DELETE", &format!("/services/{}", segment(name)?), None)?;
                outln!("{name}");
            }
            Ok(0)
        }
    }
}

/// A service name as a path segment.
fn segment(name: &str) -> Result<&str> {
    match !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        true => Ok(name),
        false => bail!("no such service: {name}"),
    }
}

/// An image as kilnd must get it: a program's path absolute.
fn image_for_kilnd(image: &str) -> String {
    let is_path = image.starts_with('.') || (Path::new(image).exists() && !crate::kilnd_client::is_image(image));
    match is_path {
        true => crate::kilnd_client::absolute(Path::new(image)).to_string_lossy().into_owned(),
        false => image.to_string(),
    }
}

fn create(client: &Client, args: CreateArgs) -> Result<u8> {
    let request = ServiceRequest {
        name: args.name.clone(),
        image: image_for_kilnd(&args.image),
        replicas: Some(args.replicas),
        publish: args.publish,
        args: args.args,
        env: args.template.env,
        memory: args.template.memory.map(Size::Text),
        health: args.health_check.map(|check| HealthCheck {
            check,
            interval_ms: args.health_interval,
            timeout_ms: args.health_timeout,
            retries: args.health_retries,
        }),
        max_surge: args.policy.max_surge,
        max_unavailable: args.policy.max_unavailable,
        monitor_ms: args.policy.monitor,
        ..ServiceRequest::default()
    };
    let body = serde_json::to_value(&request).context("cannot write the request")?;
    client.request("POST", "/services", Some(&body))?;
    outln!("{}", args.name);
    Ok(0)
}

fn update(client: &Client, args: UpdateArgs) -> Result<u8> {
    let name = segment(&args.name)?;
    let request = ServiceUpdate {
        image: args.image.as_deref().map(image_for_kilnd),
        args: (!args.args.is_empty()).then_some(args.args),
        env: (!args.template.env.is_empty()).then_some(args.template.env),
        memory: args.template.memory.map(Size::Text),
        replicas: args.replicas,
        max_surge: args.policy.max_surge,
        max_unavailable: args.policy.max_unavailable,
        monitor_ms: args.policy.monitor,
        ..ServiceUpdate::default()
    };
    let body = serde_json::to_value(&request).context("cannot write the request")?;
    client.request("POST", &format!("/services/{name}/update"), Some(&body))?;
    match args.detach {
        true => Ok(0),
        false => wait(client, name),
    }
}

/// Waits for an update or rollback to end; says how it ended (1 if the update was rolled back).
fn wait(client: &Client, name: &str) -> Result<u8> {
    let start = Instant::now();
    loop {
        let status: ServiceStatus = client.request("GET", &format!("/services/{name}"), None)?.json()?;
        let record = &status.record;
        let message = record.message.clone().unwrap_or_default();
        match record.phase {
            Phase::Steady if status.ready == record.replicas => {
                outln!("{name}: {message}");
                return Ok(0);
            }
            Phase::RolledBack if status.ready == record.replicas => {
                eprintln!("kiln: service {name}: {message}");
                return Ok(1);
            }
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(3600) {
            bail!("service {name} has not settled within an hour: {message}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ls(client: &Client, output: &str) -> Result<u8> {
    let all: Vec<ServiceStatus> = client.request("GET", "/services", None)?.json()?;
    if output == "json" {
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            let r = &s.record;
            vec![
                r.name.clone(),
                r.current.template.image.clone(),
                r.current.generation.to_string(),
                format!("{}/{}", s.ready, r.replicas),
                r.publish.join(","),
                serde_json::to_value(r.phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["NAME", "IMAGE", "GENERATION", "READY", "PORTS", "PHASE"], &rows);
    Ok(0)
}

fn ps(client: &Client, name: &str) -> Result<u8> {
    let status: ServiceStatus = client.request("GET", &format!("/services/{}", segment(name)?), None)?.json()?;
    let rows: Vec<Vec<String>> = status
        .running
        .iter()
        .map(|r| {
            let state = match (r.ready, r.draining) {
                (_, true) => "draining",
                (true, false) => "ready",
                (false, false) => "starting",
            };
            vec![r.id.clone(), r.name.clone(), r.generation.to_string(), state.to_string()]
        })
        .collect();
    print_table(&["ID", "NAME", "GENERATION", "STATE"], &rows);
    Ok(0)
}
