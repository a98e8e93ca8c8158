//! The gateway's command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgeshare_shared::backend::HttpClient;
use edgeshare_shared::backend::crowd::CrowdClient;
use edgeshare_shared::cli::ConfigArgs;
use edgeshare_shared::code::AccessCode;
use edgeshare_shared::logging::LogArgs;
use edgeshare_shared::paths::Daemon;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::code_book::{CodeBook, CodeRow, Order};
use crate::codes::CodeStore;
use crate::config::{CodeSource, GatewayConfig};
use crate::control::{self, Request};
use crate::firewall::{GardenEntry, NftFirewall};
use crate::neighbours::limits;
use crate::net::Mac;
use crate::vouchers::{self, Sheet, Voucher};

/// edgeshare gateway: a captive portal that lets consumers online with an access code and
/// counts the bytes they use.
#[derive(Debug, Parser)]
#[command(name = "edgeshare-gateway", version)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: portal, enforcement, accounting (as root, or with CAP_NET_ADMIN).
    Run,
    /// Check the configuration and exit: 0 if good, 78 with every problem listed if not.
    CheckConfig,
    /// Show the running daemon's state.
    Status,
    /// List the sessions and their devices.
    Clients {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Log a device out now (it may enter its code again).
    Kick {
        /// The device's MAC address, e.g. 02:00:00:00:00:02.
        mac: Mac,
    },
    /// Make, list or revoke access codes (works whether the daemon runs or not).
    #[command(subcommand)]
    Codes(CodesCommand),
    /// Put the nftables table in place or take it away without the daemon (boot, removal).
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Raise the kernel's neighbour-table limits to fit lan.max_clients, as `run` does at
    /// start, and print them. For a gateway in a network namespace of its own (a container),
    /// whose limits are the host's: run this in the host's namespace.
    NeighbourLimits,
    /// Turn this system into a hotspot: the Wi-Fi interface's addresses (kept from other
    /// network managers), hostapd, dnsmasq (DHCP with the portal's address in option 114,
    /// router advertisements, DNS), gateway.toml; then enable and start the units and print the
    /// portal's address and a first code. Shows every change first; a second run changes
    /// nothing; `--undo` puts every file back.
    Setup(SetupArgs),
}

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The Wi-Fi network's name (1 to 32 bytes).
    #[arg(long, required_unless_present = "undo")]
    pub ssid: Option<String>,
    /// Where the Pi is, as the two-letter ISO 3166 code (GB, DE, US): it sets the channels
    /// and power the radio may use.
    #[arg(long, required_unless_present = "undo")]
    pub country: Option<String>,
    /// The Wi-Fi interface for the access point [default: the only Wi-Fi interface].
    #[arg(long, value_name = "IFACE")]
    pub lan: Option<String>,
    /// The uplink [default: the interface of the default route].
    #[arg(long, value_name = "IFACE")]
    pub wan: Option<String>,
    /// A WPA2 passphrase (8 to 63 characters) for the Wi-Fi; without it the network is open
    /// and the portal is the gate. The environment keeps it out of `ps` and the history.
    #[arg(long, env = "EDGESHARE_SETUP_PASSPHRASE", hide_env_values = true)]
    pub passphrase: Option<String>,
    /// Print the files and commands, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Put back every file setup replaced and remove those it created.
    #[arg(long, conflicts_with_all = ["ssid", "country", "lan", "wan", "passphrase", "dry_run"])]
    pub undo: bool,
    /// Data allowance of the first code printed at the end, in MB.
    #[arg(long, default_value_t = 500.0)]
    pub code_mb: f64,
    /// Hours the first code stays valid.
    #[arg(long, default_value_t = 24.0)]
    pub code_hours: f64,
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Install the table the daemon installs, and exit: every LAN device is captive and
    /// nothing is forwarded until the daemon runs. Run at boot before the network comes up
    /// (edgeshare-portal-only.service), so the LAN is never open. Devices already online in
    /// the table stay online. Host names in portal.walled_garden are left for the daemon to
    /// resolve when it starts.
    Install,
    /// Delete the table: edgeshare no longer filters the LAN (when the package is removed).
    Remove,
}

#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// Make codes; prints one code per line.
    Create {
        /// Data allowance of each code, in MB (2^20 bytes).
        #[arg(long)]
        mb: f64,
        /// Hours each code stays valid.
        #[arg(long, default_value_t = 24.0, conflicts_with = "no_expiry")]
        hours: f64,
        /// Codes that never expire (backend codes only: `expireAt` null; the session still
        /// ends after `session.max_duration`, and the code works again after it).
        #[arg(long)]
        no_expiry: bool,
        /// How many codes.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Also write a printable sheet of vouchers to this HTML file: each code with its
        /// data, its validity and QR codes to join the Wi-Fi (portal.ssid) and to open the
        /// portal with the code filled in.
        #[arg(long, value_name = "FILE")]
        print: Option<PathBuf>,
    },
    /// List the codes with what is left on each.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a code: it stops working and its devices are cut off.
    Revoke { code: AccessCode },
}

/// Prints each limit; fails if one stays too low or this namespace has none.
fn neighbour_limits(max_clients: u32) -> anyhow::Result<()> {
    match limits::fit(Path::new(limits::PROC_SYS), max_clients) {
        limits::Fitting::Limits(found) => {
            for limit in &found {
                println!("{}", limit.describe());
            }
            let short = found
                .iter()
                .filter(|l| matches!(l.outcome, limits::Outcome::Failed(_)))
                .count();
            anyhow::ensure!(
                short == 0,
                "{short} neighbour-table limit(s) too low for lan.max_clients = {max_clients}"
            );
            Ok(())
        }
        limits::Fitting::NotHostNamespace => anyhow::bail!("{}", limits::NOT_HOST_NAMESPACE),
    }
}

/// Runs `print` on standard output. A reader that went away (`clients | head`, `codes list |
/// grep -q`) ends the output quietly: the rest was not wanted, and that is no error.
fn to_stdout(print: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match print(&mut out).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to standard output"),
    }
}

/// Threads for blocking work in the daemon (neighbour lookups, the code store).
const BLOCKING_THREADS: usize = 8;
/// Most threads running the daemon's tasks. Its work is waiting on sockets and on the state
/// owner's thread (which applies every login), so more workers than this bring no speed,
/// only a stack and a thread each (tokio starts one per core: 4 on a Pi 4).
const WORKER_THREADS: usize = 2;

/// The runtime's workers: one per core, [`WORKER_THREADS`] at most.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().min(WORKER_THREADS))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    edgeshare_shared::logging::init(&cli.log);
    let load = || -> anyhow::Result<GatewayConfig> {
        cli.config
            .load(Daemon::Gateway)
            .context("the gateway configuration is not usable")
    };
    match cli.command {
        Command::CheckConfig => {
            edgeshare_shared::cli::check_config::<GatewayConfig>(&cli.config, Daemon::Gateway).map(
                |config| {
                    if let Some(warning) = config.codes.deprecation() {
                        eprintln!("warning: {warning}");
                    }
                },
            )
        }
        Command::Run => {
            let config = load()?;
            crate::allocator::limit_arenas();
            // A crowd of logins runs a neighbour lookup each on the blocking pool: a few
            // threads serve it as well as hundreds, and each thread left over keeps its
            // stack and allocator arena (memory a Pi does not have to spare).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .worker_threads(worker_threads())
                .max_blocking_threads(BLOCKING_THREADS)
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(crate::daemon::run(config))
        }
        Command::Status => {
            let config = load()?;
            let status = control::call(&config.control.socket, &Request::Status)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Clients { json } => {
            let config = load()?;
            let sessions = control::call(&config.control.socket, &Request::Clients)?;
            to_stdout(|out| {
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&sessions)?)
                } else {
                    print_clients(out, &sessions)
                }
            })
        }
        Command::Kick { mac } => {
            let config = load()?;
            control::call(&config.control.socket, &Request::Kick { mac })?;
            println!("{mac} logged out");
            Ok(())
        }
        Command::Codes(command) => codes(&load()?, command),
        Command::Firewall(command) => firewall(&load()?, command),
        Command::NeighbourLimits => neighbour_limits(load()?.lan.max_clients),
        Command::Setup(args) => setup(&cli.config, args),
    }
}

fn setup(config_args: &ConfigArgs, args: SetupArgs) -> anyhow::Result<()> {
    use crate::setup::{self, files};
    let root = Path::new("/");
    if args.undo {
        let undone = files::undo(root)?;
        for path in &undone.restored {
            println!("restored {}", path.display());
        }
        for path in &undone.removed {
            println!("removed  {}", path.display());
        }
        run_actions(&setup::undo_actions(&undone), &files::Written::default())?;
        println!("every file is as it was before setup, and the units as they were");
        return Ok(());
    }
    let (Some(ssid), Some(country)) = (args.ssid, args.country) else {
        anyhow::bail!("--ssid and --country are required");
    };
    let request = setup::Request {
        ssid,
        country,
        lan: args.lan,
        wan: args.wan,
        passphrase: args.passphrase,
    };
    let detected = setup::detect::detect(root)?;
    let plan = setup::plan(&detected, &request)?;
    println!(
        "network stack: {}; access point on {} ({} and {}/64), uplink {}",
        plan.stack.name(),
        plan.lan,
        plan.ipv4,
        plan.ula,
        plan.wan
    );
    // The configuration as the daemon will read it, before anything is written.
    let toml = plan
        .file(setup::GATEWAY_TOML)
        .context("the plan has no gateway.toml")?;
    let env_file = config_args
        .env_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/edgeshare/gateway.env"));
    let scratch = std::env::temp_dir().join(format!("edgeshare-setup-{}.toml", std::process::id()));
    std::fs::write(&scratch, &toml.content)
        .with_context(|| format!("writing {}", scratch.display()))?;
    let checked = edgeshare_shared::config::load_for_check::<GatewayConfig>(
        &scratch,
        env_file.exists().then_some(env_file.as_path()),
    );
    let _ = std::fs::remove_file(&scratch);
    checked.with_context(|| {
        format!(
            "the {} setup would write is not usable; nothing was changed",
            setup::GATEWAY_TOML
        )
    })?;
    for file in &plan.files {
        let change = files::change_of(root, file)?;
        println!(
            "{:<9} {} (mode {:o})",
            change.as_str(),
            file.path.display(),
            file.mode
        );
        if args.dry_run && change != files::Change::Unchanged {
            for line in file.content.lines() {
                // The Wi-Fi passphrase is a secret: never on the screen or in a log.
                match line.strip_prefix("wpa_passphrase=") {
                    Some(_) => println!("    wpa_passphrase=(hidden)"),
                    None => println!("    {line}"),
                }
            }
        }
    }
    if args.dry_run {
        for action in &plan.actions {
            let when = match &action.when {
                setup::When::Always => String::new(),
                setup::When::Changed(paths) => format!(
                    "   (if {} changed)",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            };
            println!("run       {}{when}", action.argv.join(" "));
        }
        println!("dry run: nothing was changed");
        return Ok(());
    }
    // The units' states before setup, for undo (kept from the first run only).
    let before = files::Before {
        lan: Some(plan.lan.clone()),
        units: setup::UNITS
            .iter()
            .map(|unit| {
                let state = std::process::Command::new("systemctl")
                    .args(["is-enabled", unit])
                    .output()
                    .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                    .unwrap_or_default();
                ((*unit).to_owned(), state)
            })
            .collect(),
        running: setup::UNITS
            .iter()
            .filter(|unit| {
                std::process::Command::new("systemctl")
                    .args(["is-active", "--quiet", unit])
                    .status()
                    .is_ok_and(|status| status.success())
            })
            .map(|unit| (*unit).to_owned())
            .collect(),
    };
    let written = files::apply(root, &plan.files, &before)?;
    run_actions(&plan.actions, &written)?;
    println!(
        "setup done: {} file(s) created, {} replaced, {} unchanged; `edgeshare-gateway setup --undo` puts them back",
        written.created.len(),
        written.replaced.len(),
        written.unchanged.len()
    );
    println!(
        "portal: {} (and http://[{}]:{}/)",
        plan.portal_url(),
        plan.ula,
        plan.portal_port
    );
    let config: GatewayConfig = edgeshare_shared::config::load(
        Path::new(setup::GATEWAY_TOML),
        env_file.exists().then_some(env_file.as_path()),
    )
    .context("reading the configuration setup wrote")?;
    println!(
        "a first code ({} MB, {} h; more with `edgeshare-gateway codes create`):",
        args.code_mb, args.code_hours
    );
    codes(
        &config,
        CodesCommand::Create {
            mb: args.code_mb,
            hours: args.code_hours,
            no_expiry: false,
            count: 1,
            print: None,
        },
    )
}

/// Runs each action that is due after `written`: a required one that fails stops setup, any
/// other is a warning.
fn run_actions(
    actions: &[crate::setup::Action],
    written: &crate::setup::files::Written,
) -> anyhow::Result<()> {
    for action in actions {
        let due = match &action.when {
            crate::setup::When::Always => true,
            crate::setup::When::Changed(paths) => paths.iter().any(|p| written.changed(p)),
        };
        if !due {
            continue;
        }
        println!("run       {}", action.argv.join(" "));
        let status = std::process::Command::new(&action.argv[0])
            .args(&action.argv[1..])
            .status()
            .with_context(|| format!("running {}", action.argv[0]));
        match status {
            Ok(status) if status.success() => {}
            failed if action.required => {
                let why = match failed {
                    Ok(status) => status.to_string(),
                    Err(err) => format!("{err:#}"),
                };
                anyhow::bail!(
                    "`{}` failed ({why}); the files are written: fix the cause and run setup again, or `edgeshare-gateway setup --undo`",
                    action.argv.join(" ")
                );
            }
            _ => {
                let hint = if action.argv.iter().any(|word| word == "hostapd") {
                    ": see `journalctl -u hostapd` (a Wi-Fi radio that cannot be an access point?)"
                } else {
                    ""
                };
                eprintln!("warning: `{}` failed{hint}", action.argv.join(" "));
            }
        }
    }
    Ok(())
}

fn firewall(config: &GatewayConfig, command: FirewallCommand) -> anyhow::Result<()> {
    let table = &config.firewall.table;
    match command {
        FirewallCommand::Install => {
            // Before the network is up nothing can be resolved: only the garden's CIDRs now.
            let mut garden = Vec::new();
            for entry in &config.portal.walled_garden {
                match entry.parse::<GardenEntry>() {
                    Ok(entry) => garden.push(entry),
                    Err(_) => tracing::info!(
                        host = %entry,
                        "portal.walled_garden: a host name, added when the daemon starts"
                    ),
                }
            }
            NftFirewall::new(config.firewall_config(garden))
                .install()
                .with_context(|| format!("installing the nftables table inet {table}"))?;
            println!(
                "nftables table inet {table} in place: LAN devices on {} are captive until they log in",
                config.lan.interface
            );
        }
        FirewallCommand::Remove => {
            NftFirewall::new(config.firewall_config(Vec::new()))
                .uninstall()
                .with_context(|| format!("deleting the nftables table inet {table}"))?;
            println!("nftables table inet {table} removed");
        }
    }
    Ok(())
}

fn codes(config: &GatewayConfig, command: CodesCommand) -> anyhow::Result<()> {
    let book = match config.codes.source {
        CodeSource::Local => CodeBook::Local(CodeStore::new(&config.state.dir)),
        CodeSource::Backend => {
            let backend = config
                .backend
                .as_ref()
                .context("codes.source = \"backend\" needs a [backend] section")?;
            CodeBook::Backend(std::sync::Arc::new(CrowdClient::new(
                &HttpClient::new(&config.http)?,
                backend,
            )))
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(codes_with(config, &book, command))
}

async fn codes_with(
    config: &GatewayConfig,
    book: &CodeBook,
    command: CodesCommand,
) -> anyhow::Result<()> {
    match command {
        CodesCommand::Create {
            mb,
            hours,
            no_expiry,
            count,
            print,
        } => {
            let order = Order {
                mb,
                hours: (!no_expiry).then_some(hours),
                count,
            };
            // The flags' names, not the dashboard form's fields.
            order
                .check(book)
                .map_err(|e| anyhow::anyhow!("--{e}").context("the codes were not made"))?;
            let made = book.create(&order).await?;
            to_stdout(|out| {
                made.iter()
                    .try_for_each(|row| writeln!(out, "{}", row.code))
            })?;
            if let Some(path) = print {
                print_vouchers(config, made.iter().map(CodeRow::voucher).collect(), &path)?;
            }
        }
        CodesCommand::List { json } => list_codes(book, json).await?,
        CodesCommand::Revoke { code } => {
            let in_store = book.revoke(&code).await?;
            // Devices online with it are cut off now if the daemon runs; if it does not,
            // a revoked local code simply no longer works when it starts.
            match control::call(
                &config.control.socket,
                &Request::RevokeCode { code: code.clone() },
            ) {
                Ok(_) => {}
                Err(control::ControlError::NotRunning { .. }) if in_store => {}
                Err(err) if in_store => eprintln!(
                    "warning: revoked in the store, but the daemon did not confirm: {err}"
                ),
                Err(err) => return Err(err.into()),
            }
            if in_store {
                println!("{code} revoked");
            } else {
                println!(
                    "{code}: devices on this gateway cut off; the backend has no way to revoke codes, so it works until it expires"
                );
            }
        }
    }
    Ok(())
}

/// Writes the printable sheet of `vouchers` to `path`. The portal's address is the LAN
/// interface's, as the daemon serves it.
fn print_vouchers(
    config: &GatewayConfig,
    vouchers: Vec<Voucher>,
    path: &Path,
) -> anyhow::Result<()> {
    let lan_ip = crate::net::interface_ipv4(&config.lan.interface)
        .context("the vouchers' portal address comes from lan.interface")?;
    let settings = Sheet {
        provider: config.portal.brand.name.clone(),
        ssid: config.portal.ssid.clone(),
        portal_url: format!("http://{lan_ip}:{}/", config.portal.port),
    };
    let html = vouchers::sheet(&settings, &vouchers).context("making the vouchers' QR codes")?;
    std::fs::write(path, html)
        .with_context(|| format!("writing the vouchers to {}", path.display()))?;
    eprintln!(
        "{} voucher(s) in {}: open it in a browser and print",
        vouchers.len(),
        path.display()
    );
    Ok(())
}

async fn list_codes(book: &CodeBook, json: bool) -> anyhow::Result<()> {
    // The JSON is each source's own record, as it always was: scripts read it.
    match (book, json) {
        (CodeBook::Local(store), true) => {
            let text = serde_json::to_string_pretty(&store.list()?)?;
            return to_stdout(|out| writeln!(out, "{text}"));
        }
        (CodeBook::Backend(client), true) => {
            let value: Vec<_> = client
                .list_codes()
                .await?
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "code": c.code,
                        "totalMB": c.total_mb,
                        "remainingMB": c.remaining_mb,
                        "expireAt": c.expire_at.and_then(|at| at.format(&Rfc3339).ok()),
                    })
                })
                .collect();
            let text = serde_json::to_string_pretty(&value)?;
            return to_stdout(|out| writeln!(out, "{text}"));
        }
        (_, false) => {}
    }
    let now = OffsetDateTime::now_utc();
    let rows = book.list().await?;
    to_stdout(|out| {
        writeln!(
            out,
            "{:<10} {:>10} {:>10} {:<8} EXPIRES (UTC)",
            "CODE", "MB LEFT", "MB TOTAL", "STATE"
        )?;
        for row in rows {
            let expires = match row.expires {
                None => "never".to_owned(),
                Some(at) => at
                    .format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
                    .unwrap_or_else(|_| "?".to_owned()),
            };
            writeln!(
                out,
                "{:<10} {:>10.1} {:>10.1} {:<8} {expires}",
                row.code,
                row.remaining_mb,
                row.total_mb,
                row.state(now).as_str()
            )?;
        }
        Ok(())
    })
}

fn print_clients(out: &mut dyn Write, sessions: &serde_json::Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<17} {:<39} {:>12} {:>12}",
        "CODE", "MAC", "IP", "USED MB", "QUOTA MB"
    )?;
    for s in sessions.as_array().into_iter().flatten() {
        let mb = |key: &str| s[key].as_f64().unwrap_or(0.0) / 1_048_576.0;
        let code = s["code"].as_str().unwrap_or("?");
        let devices = s["devices"].as_array().cloned().unwrap_or_default();
        if devices.is_empty() {
            writeln!(
                out,
                "{:<10} {:<17} {:<39} {:>12.1} {:>12.1}",
                code,
                "-",
                "-",
                mb("used_bytes"),
                mb("quota_bytes")
            )?;
        }
        for d in devices {
            writeln!(
                out,
                "{:<10} {:<17} {:<39} {:>12.1} {:>12.1}",
                code,
                d["client"]["mac"].as_str().unwrap_or("?"),
                d["client"]["ip"].as_str().unwrap_or("?"),
                mb("used_bytes"),
                mb("quota_bytes")
            )?;
        }
    }
    Ok(())
}
