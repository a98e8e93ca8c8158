//! The dashboard's view of the daemon ([`DaemonSource`]): the state's owner for devices and
//! health, the code book for codes, the usage ledger for the charts, the backend for the
//! account's earnings, and the agent's metrics endpoint for its health.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edgeshare_shared::code::AccessCode;
use edgeshare_shared::ledger::LedgerReader;
use edgeshare_shared::prometheus::{fetch_agent, read_label, read_value};
use time::OffsetDateTime;

use super::owner::Owner;
use crate::code_book::{CodeBook, CodeRow, Order};
use crate::control::{Reply, Request};
use crate::dashboard::Source;
use crate::dashboard::chart::{DAY_MS, HOUR_MS, UsageChart};
use crate::dashboard::view::{Agent, AgentFigures, Earnings, Live, Shortfall, Usage};
use crate::net::{Mac, Millis};

/// The usage chart and where it has read the ledger up to.
#[derive(Debug, Default)]
struct ChartReader {
    reader: Option<LedgerReader>,
    cursor: u64,
    chart: UsageChart,
}

pub(super) struct DaemonSource {
    pub owner: Owner,
    pub book: CodeBook,
    pub ledger_dir: PathBuf,
    pub agent_metrics: SocketAddr,
    chart: Arc<Mutex<ChartReader>>,
}

impl DaemonSource {
    pub fn new(
        owner: Owner,
        book: CodeBook,
        ledger_dir: PathBuf,
        agent_metrics: SocketAddr,
    ) -> Self {
        DaemonSource {
            owner,
            book,
            ledger_dir,
            agent_metrics,
            chart: Arc::default(),
        }
    }
}

fn reply_text(reply: Reply) -> Result<String, String> {
    match reply {
        Reply::Ok(value) => Ok(value.to_string()),
        Reply::Error(err) => Err(err),
    }
}

/// Reads what the ledger gained since the last time into the chart, and the chart's
/// periods at `now`. Blocking (file reads).
fn read_usage(
    chart: &Mutex<ChartReader>,
    dir: &std::path::Path,
    now: Millis,
) -> Result<Usage, String> {
    let mut guard = chart
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let state = &mut *guard;
    if state.reader.is_none() {
        state.reader = Some(LedgerReader::open(dir).map_err(|e| e.to_string())?);
    }
    let reader = state.reader.as_mut().expect("opened above");
    let read = reader.read_since(state.cursor).map_err(|e| e.to_string())?;
    if read.went_back.is_some() {
        // Every record comes again: start the chart over.
        state.chart = UsageChart::default();
    }
    for record in &read.records {
        state.chart.take(record);
    }
    if let Some(last) = read.records.last() {
        state.cursor = last.seq;
    }
    state.chart.prune(now.0);
    let label = |ms: u64, format: &[time::format_description::BorrowedFormatItem<'_>]| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(format).ok())
            .unwrap_or_default()
    };
    let hour = time::macros::format_description!("[hour]h");
    let day = time::macros::format_description!("[weekday repr:short] [day]");
    Ok(Usage {
        hours: state
            .chart
            .periods(now.0, HOUR_MS, 24)
            .into_iter()
            .map(|(start, bytes)| (label(start, hour), bytes))
            .collect(),
        days: state
            .chart
            .periods(now.0, DAY_MS, 7)
            .into_iter()
            .map(|(start, bytes)| (label(start, day), bytes))
            .collect(),
    })
}

/// The agent's figures from its metrics text.
fn agent_figures(text: &str) -> AgentFigures {
    let n = |name: &str| read_value(text, &format!("edgeshare_agent_{name}")).unwrap_or(0.0) as u64;
    let failing = n("usage_failing_since_seconds");
    AgentFigures {
        uptime_seconds: n("uptime_seconds"),
        billing: n("usage_configured") == 1,
        failing_since: (failing > 0).then_some(failing),
        reported_bytes: n("usage_reported_bytes_total"),
        pending_bytes: n("usage_pending_bytes"),
        last_error: read_label(text, "edgeshare_agent_last_error_info", "error")
            .filter(|(_, at)| *at > 0.0)
            .map(|(error, _)| error),
        shortfall: (n("usage_credit_reconciled") == 1).then(|| Shortfall {
            points: n("usage_credit_shortfall_points"),
            bytes: n("usage_credit_shortfall_bytes"),
            entries_missed: n("usage_credit_entries_missed") == 1,
        }),
    }
}

impl Source for DaemonSource {
    async fn live(&self) -> Option<Live> {
        self.owner.dashboard().await
    }

    async fn codes(&self) -> Result<Vec<CodeRow>, String> {
        self.book.list().await.map_err(|e| format!("{e:#}"))
    }

    async fn create_codes(&self, order: Order) -> Result<Vec<CodeRow>, String> {
        self.book.create(&order).await.map_err(|e| format!("{e:#}"))
    }

    async fn revoke(&self, code: AccessCode) -> Result<String, String> {
        let in_store = self
            .book
            .revoke(&code)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let cut = reply_text(self.owner.control(Request::RevokeCode { code }).await)?;
        Ok(if in_store {
            format!("revoked: {cut}")
        } else {
            format!("devices cut off here (the backend cannot revoke codes): {cut}")
        })
    }

    async fn kick(&self, mac: Mac) -> Result<String, String> {
        reply_text(self.owner.control(Request::Kick { mac }).await)
    }

    async fn usage(&self, now: Millis) -> Result<Usage, String> {
        let chart = Arc::clone(&self.chart);
        let dir = self.ledger_dir.clone();
        tokio::task::spawn_blocking(move || read_usage(&chart, &dir, now))
            .await
            .map_err(|e| e.to_string())?
    }

    async fn earnings(&self) -> Option<Result<Earnings, String>> {
        let CodeBook::Backend(client) = &self.book else {
            return None;
        };
        Some(
            client
                .me()
                .await
                .map(|me| Earnings {
                    name: me.user.name.unwrap_or(me.user.email),
                    points: me.points,
                    bytes_shared: match me.bytes_shared {
                        serde_json::Value::String(text) => text,
                        other => other.to_string(),
                    },
                })
                .map_err(|e| e.to_string()),
        )
    }

    async fn agent(&self) -> Agent {
        match fetch_agent(self.agent_metrics).await {
            Ok(text) => Agent::Running(agent_figures(&text)),
            Err(err) => Agent::Unreachable(format!("{err:#}")),
        }
    }

    fn backend(&self) -> bool {
        matches!(self.book, CodeBook::Backend(_))
    }

    fn check(&self, order: &Order) -> Result<(), String> {
        order.check(&self.book)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_figures_are_read_from_its_metrics() {
        let text = "edgeshare_agent_uptime_seconds 75\n\
edgeshare_agent_usage_configured 1\n\
edgeshare_agent_usage_failing_since_seconds 1700000000\n\
edgeshare_agent_usage_reported_bytes_total 4096\n\
edgeshare_agent_usage_pending_bytes 12\n\
edgeshare_agent_usage_credit_reconciled 1\n\
edgeshare_agent_usage_credit_shortfall_points 35\n\
edgeshare_agent_usage_credit_shortfall_bytes 36700000\n\
edgeshare_agent_usage_credit_entries_missed 0\n\
edgeshare_agent_last_error_info{error=\"backend \\\"down\\\"\"} 1700000001\n";
        let figures = agent_figures(text);
        assert_eq!(
            figures,
            AgentFigures {
                uptime_seconds: 75,
                billing: true,
                failing_since: Some(1_700_000_000),
                reported_bytes: 4096,
                pending_bytes: 12,
                last_error: Some("backend \"down\"".to_owned()),
                shortfall: Some(Shortfall {
                    points: 35,
                    bytes: 36_700_000,
                    entries_missed: false
                }),
            }
        );
        assert_eq!(agent_figures("").failing_since, None);
        assert_eq!(agent_figures("").shortfall, None, "not compared yet");
    }
}
