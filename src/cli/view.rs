//! `raftkv view`: the live cluster view of any running cluster, served to a browser.
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::client::Conn;
use super::{CliError, CmdResult};

#[derive(Args, Debug)]
pub struct ViewArgs {
    /// Where to serve the page. Anyone who reaches it can put keys and hand over
    /// leadership: keep it on loopback unless the network is trusted.
    #[arg(long, default_value = "127.0.0.1:7400", value_name = "HOST:PORT")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(args: ViewArgs) -> CmdResult {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::io(format!("cannot serve the cluster view on {} (--listen)", args.listen), e))?;
    let slots = args
        .conn
        .endpoints
        .iter()
        .map(|e| Ok(raftkv::view::Slot { endpoint: e.clone(), channel: args.conn.channel(e, Duration::from_secs(1))? }))
        .collect::<Result<Vec<_>, CliError>>()?;
    let n = slots.len();
    if !args.listen.ip().is_loopback() {
        println!("raftkv view: warning: anyone who reaches {} can put keys and hand over leadership", args.listen);
    }
    let nodes = raftkv::view::Nodes::new(slots, None, args.conn.timeout());
    println!("raftkv view: following {n} nodes; open http://{}/ (Ctrl-C stops)", args.listen);
    tokio::select! {
        () = raftkv::view::serve(listener, nodes) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}
