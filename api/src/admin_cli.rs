//! `isnad teams …`, `isnad keys …`, `isnad usage …`: the admin API from a shell, against a
//! running server (`--url` / `ISNAD_URL`, the key from `ISNAD_ADMIN_KEY`).
//!
//! Each command is one request; `--json` prints the server's answer as it came, otherwise a
//! short table. A refusal prints the server's error message and exits 1.

use std::io::Write as _;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

/// Where the server is and who asks.
#[derive(Args, Clone, Debug)]
pub struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        env = "ISNAD_URL",
        default_value = "http://127.0.0.1:8088",
        global = true
    )]
    pub url: String,
    /// The API key to call with (an admin's, or an operator's for its own team).
    #[arg(long, env = "ISNAD_ADMIN_KEY", hide_env_values = true, global = true)]
    pub admin_key: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Caps of `… budget`.
#[derive(Args, Clone, Debug, Default)]
pub struct BudgetArgs {
    /// Token cap per period.
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Cost cap per period, in millionths of the currency unit.
    #[arg(long)]
    pub cost_micros: Option<u64>,
    /// `day` or `month`.
    #[arg(long, default_value = "month")]
    pub period: String,
    /// `UTC` or an offset such as `+03:00`.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
}

/// Limits of `… limits`.
#[derive(Args, Clone, Debug, Default)]
pub struct LimitArgs {
    /// Requests per minute (keys only).
    #[arg(long)]
    pub requests_per_minute: Option<u32>,
    /// Requests at once on top of the average (keys only).
    #[arg(long)]
    pub burst: Option<u32>,
    /// Tokens per UTC minute.
    #[arg(long)]
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day.
    #[arg(long)]
    pub tokens_per_day: Option<u64>,
}

/// `isnad teams …`
#[derive(Subcommand, Clone, Debug)]
pub enum TeamsCommand {
    /// Lists teams.
    List,
    /// Creates a team.
    Create {
        /// Its id (letters, digits, `-`, `_`, `.`).
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// Shows a team.
    Show {
        /// Its id.
        id: String,
    },
    /// Renames a team.
    Rename {
        /// Its id.
        id: String,
        /// The new name.
        name: String,
    },
    /// Sets (or, with neither cap, removes) a team's budget.
    Budget {
        /// Its id.
        id: String,
        /// The caps.
        #[command(flatten)]
        caps: BudgetArgs,
    },
    /// Sets (or, with none, removes) a team's token limits.
    Limits {
        /// Its id.
        id: String,
        /// The limits.
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// `isnad keys …`
#[derive(Subcommand, Clone, Debug)]
pub enum KeysCommand {
    /// Lists keys.
    List {
        /// Only this team's.
        #[arg(long)]
        team: Option<String>,
    },
    /// Issues a key; the key itself is printed once, here, and never again.
    Create {
        /// Who uses it.
        #[arg(long)]
        label: String,
        /// Its team.
        #[arg(long)]
        team: Option<String>,
        /// `admin`, `operator`, `member` (default) or `auditor`.
        #[arg(long)]
        role: Option<String>,
        /// Models it may use (repeat, or comma-separated; default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// `local` to keep its data inside the boundary.
        #[arg(long)]
        residency: Option<String>,
        /// Seconds until it expires.
        #[arg(long)]
        expires_in_s: Option<u64>,
        /// Client addresses it is accepted from (CIDR; repeat, or comma-separated).
        #[arg(long, value_delimiter = ',')]
        cidrs: Vec<String>,
    },
    /// Shows a key (never the key itself).
    Show {
        /// Its id.
        id: String,
    },
    /// Issues a replacement; the old key keeps working for the grace period.
    Rotate {
        /// Its id.
        id: String,
        /// Seconds the old key stays valid (default one day).
        #[arg(long)]
        grace_seconds: Option<u64>,
    },
    /// Revokes a key: the next request with it is refused.
    Revoke {
        /// Its id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Sets (or, with neither cap, removes) a key's budget.
    Budget {
        /// Its id.
        id: String,
        /// The caps.
        #[command(flatten)]
        caps: BudgetArgs,
    },
    /// Sets (or, with none, removes) a key's rate limits.
    Limits {
        /// Its id.
        id: String,
        /// The limits.
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// Filters of `isnad usage`.
#[derive(Args, Clone, Debug, Default)]
pub struct UsageArgs {
    /// Only this team's.
    #[arg(long)]
    pub team: Option<String>,
    /// Only this key's (its id).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this model's.
    #[arg(long)]
    pub model: Option<String>,
    /// First UTC day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Last UTC day, inclusive.
    #[arg(long)]
    pub to: Option<String>,
    /// `day` for one row per day, `total` (default) for sums.
    #[arg(long)]
    pub group_by: Option<String>,
}

impl UsageArgs {
    /// The query string of `GET /v1/usage`.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("team", &self.team),
            ("key", &self.key),
            ("model", &self.model),
            ("from", &self.from),
            ("to", &self.to),
            ("group_by", &self.group_by),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

struct Client {
    http: reqwest::Client,
    remote: Remote,
}

impl Client {
    fn new(remote: Remote) -> anyhow::Result<Self> {
        if remote.admin_key.as_deref().is_none_or(str::is_empty) {
            bail!("no API key: set ISNAD_ADMIN_KEY (or pass --admin-key)");
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self { http, remote })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.remote.url.trim_end_matches('/'));
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(self.remote.admin_key.as_deref().unwrap_or_default())
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{status} from {url}: not JSON: {text}"))?;
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().unwrap_or(&text);
            bail!("{status}: {msg}");
        }
        Ok(v)
    }
}

fn caps_body(c: &BudgetArgs) -> Value {
    json!({"tokens": c.tokens, "cost_micros": c.cost_micros, "period": c.period, "timezone": c.timezone})
}

fn limits_body(l: &LimitArgs) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<u64>| {
        if let Some(v) = v {
            m.insert(k.into(), v.into());
        }
    };
    put("requests_per_minute", l.requests_per_minute.map(u64::from));
    put("burst", l.burst.map(u64::from));
    put("tokens_per_minute", l.tokens_per_minute);
    put("tokens_per_day", l.tokens_per_day);
    Value::Object(m)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints `v` on standard output; a reader that went away (`| head`) is not an error.
fn print(v: &Value, json_out: bool, cols: &[&str]) -> anyhow::Result<()> {
    let text = render(v, json_out, cols)?;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `v` as JSON, or lists as columns of `cols` and single objects as `key: value` lines (a
/// newly issued key first, as it is shown only once).
fn render(v: &Value, json_out: bool, cols: &[&str]) -> anyhow::Result<String> {
    if json_out {
        return Ok(serde_json::to_string_pretty(v)? + "\n");
    }
    let mut out = String::new();
    if let Some(rows) = v["data"].as_array() {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                table
                    .iter()
                    .map(|r| r[i].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| {
            let l = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ");
            l.trim_end().to_owned() + "\n"
        };
        out += &line(cols.iter().map(|c| c.to_uppercase()).collect());
        for r in table {
            out += &line(r);
        }
        return Ok(out);
    }
    if let Some(obj) = v.as_object() {
        if let Some(key) = obj.get("key").and_then(Value::as_str) {
            out += &format!("key: {key}\n(shown this once: store it now)\n");
        }
        for (k, val) in obj.iter().filter(|(k, v)| !(*k == "key" && v.is_string())) {
            out += &format!("{k}: {}\n", cell(val));
        }
    }
    Ok(out)
}

const TEAM_COLS: &[&str] = &["id", "name", "created_at", "created_by"];
const KEY_COLS: &[&str] = &[
    "id",
    "label",
    "team",
    "role",
    "status",
    "residency",
    "last_used_at",
];
const USAGE_COLS: &[&str] = &[
    "day",
    "team",
    "key",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_micros",
];

fn block_on<F: std::future::Future<Output = anyhow::Result<i32>>>(f: F) -> anyhow::Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// One admin API call.
struct Req {
    method: reqwest::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Req {
    fn new(method: reqwest::Method, path: impl Into<String>, body: Option<Value>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body,
        }
    }
}

/// Sends `req` and prints the answer (lists in columns `cols`).
fn send(remote: Remote, req: Req, cols: &[&str]) -> anyhow::Result<i32> {
    let json_out = remote.json;
    let c = Client::new(remote)?;
    block_on(async move {
        let v = c.call(req.method, &req.path, &req.query, req.body).await?;
        print(&v, json_out, cols)?;
        Ok(0)
    })
}

impl TeamsCommand {
    fn request(&self) -> Req {
        use reqwest::Method as M;
        match self {
            Self::List => Req::new(M::GET, "/v1/teams", None),
            Self::Create { id, name } => {
                Req::new(M::POST, "/v1/teams", Some(json!({"id": id, "name": name})))
            }
            Self::Show { id } => Req::new(M::GET, format!("/v1/teams/{id}"), None),
            Self::Rename { id, name } => Req::new(
                M::PATCH,
                format!("/v1/teams/{id}"),
                Some(json!({ "name": name })),
            ),
            Self::Budget { id, caps } => Req::new(
                M::PUT,
                format!("/v1/teams/{id}/budget"),
                Some(caps_body(caps)),
            ),
            Self::Limits { id, limits } => Req::new(
                M::PUT,
                format!("/v1/teams/{id}/limits"),
                Some(limits_body(limits)),
            ),
        }
    }
}

impl KeysCommand {
    fn request(&self) -> Req {
        use reqwest::Method as M;
        match self {
            Self::List { team } => Req {
                query: team.iter().map(|t| ("team", t.clone())).collect(),
                ..Req::new(M::GET, "/v1/keys", None)
            },
            Self::Create {
                label,
                team,
                role,
                models,
                residency,
                expires_in_s,
                cidrs,
            } => Req::new(
                M::POST,
                "/v1/keys",
                Some(json!({
                    "label": label,
                    "team": team,
                    "role": role,
                    "models": (!models.is_empty()).then_some(models),
                    "residency": residency,
                    "expires_in_s": expires_in_s,
                    "cidrs": cidrs,
                })),
            ),
            Self::Show { id } => Req::new(M::GET, format!("/v1/keys/{id}"), None),
            Self::Rotate { id, grace_seconds } => Req::new(
                M::POST,
                format!("/v1/keys/{id}/rotate"),
                Some(json!({ "grace_seconds": grace_seconds })),
            ),
            Self::Revoke { id, reason } => Req::new(
                M::DELETE,
                format!("/v1/keys/{id}"),
                Some(json!({ "reason": reason })),
            ),
            Self::Budget { id, caps } => Req::new(
                M::PUT,
                format!("/v1/keys/{id}/budget"),
                Some(caps_body(caps)),
            ),
            Self::Limits { id, limits } => Req::new(
                M::PUT,
                format!("/v1/keys/{id}/limits"),
                Some(limits_body(limits)),
            ),
        }
    }
}

/// `isnad teams …`
pub fn teams(remote: Remote, cmd: TeamsCommand) -> anyhow::Result<i32> {
    send(remote, cmd.request(), TEAM_COLS)
}

/// `isnad keys …`
pub fn keys(remote: Remote, cmd: KeysCommand) -> anyhow::Result<i32> {
    send(remote, cmd.request(), KEY_COLS)
}

/// `isnad usage`
pub fn usage(remote: Remote, args: UsageArgs) -> anyhow::Result<i32> {
    let req = Req {
        query: args.query(),
        ..Req::new(reqwest::Method::GET, "/v1/usage", None)
    };
    send(remote, req, USAGE_COLS)
}
