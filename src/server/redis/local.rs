//! Commands kvrouter answers itself on a redis listener: PING, ECHO, QUIT, SELECT 0, HELLO 2,
//! AUTH (the pool's `redis_auth` or the listener's `users`), RESET, CLIENT SETNAME/GETNAME/ID,
//! INFO (with a `# Proxy` section), COMMAND and TIME (the proxy's clock: the servers of a pool
//! have one clock each, and a client asking the time wants one answer).

use super::*;
use crate::logging::{untrusted, LogLimit};

/// Failed AUTHs (a client can repeat them at will): one log line per interval.
static AUTH_FAILURE_LOG: LogLimit = LogLimit::new(std::time::Duration::from_secs(10));

impl Conn {
    pub(super) fn local(&mut self, info: &CommandInfo, req: RespRequest) {
        let args = &req.args;
        match info.name {
            "ping" => match args.get(1) {
                None => self.reply_static(b"+PONG\r\n"),
                Some(a) if args.len() == 2 => self.reply(bulk(a)),
                Some(_) => self.reject("ERR wrong number of arguments for 'ping' command"),
            },
            "echo" => self.reply(bulk(&args[1])),
            "quit" => {
                self.reply_static(b"+OK\r\n");
                self.pending.push_back(Pending::Quit);
                self.parsing = false;
            }
            "select" => match std::str::from_utf8(&args[1])
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(0) => self.reply_static(b"+OK\r\n"),
                Some(_) => self.reject(
                    "ERR SELECT is not supported by kvrouter: only database 0 is served \
                     (the proxy selects the pool's redis_db on its server connections)",
                ),
                None => self.reject("ERR value is not an integer or out of range"),
            },
            "auth" => {
                let (user, pass) = match args.len() {
                    2 => (None, &args[1]),
                    3 => (Some(&args[1]), &args[2]),
                    _ => return self.reject("ERR syntax error"),
                };
                match self.auth(user, pass) {
                    Ok(()) => self.reply_static(b"+OK\r\n"),
                    Err(e) => self.reject(e),
                }
            }
            "hello" => self.hello(args),
            "reset" => {
                self.multi = None;
                self.watch = None;
                self.blocker = None;
                self.pubsub = None;
                self.name = None;
                self.authed = self.ctx.open();
                self.user = None;
                self.reply_static(b"+RESET\r\n");
            }
            "info" => {
                let text = self.info();
                self.reply(bulk(text.as_bytes()));
            }
            "client|id" => self.reply(integer(self.id as i64)),
            "client|getname" => {
                let b = match &self.name {
                    Some(n) => bulk(n),
                    None => Bytes::from_static(b"$-1\r\n"),
                };
                self.reply(b)
            }
            "client|setname" => {
                let name = &args[2];
                if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                    return self.reject(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!name.is_empty()).then(|| name.clone());
                self.reply_static(b"+OK\r\n");
            }
            "command|count" => self.reply(integer(rc::COMMANDS.len() as i64)),
            // COMMAND, COMMAND INFO/DOCS/LIST/GETKEYS: the first server describes its commands,
            // which are the ones the proxy routes (the table is checked against a live server).
            _ if info.name == "command" || info.name.starts_with("command|") => {
                self.first_server(req.raw)
            }
            "time" => self.reply(time_reply(std::time::SystemTime::now())),
            other => self.reject(&format!("ERR {other} is not answered by kvrouter")),
        }
    }

    pub(super) fn auth(&mut self, user: Option<&Bytes>, pass: &[u8]) -> Result<(), &'static str> {
        let result = self.check_auth(user, pass);
        if result.is_err() {
            // Counted every time; logged at most once per interval, never the password, the
            // user name escaped and cut (a client chooses it).
            self.ctx.metrics.auth_failures.inc();
            if let Some(suppressed) = AUTH_FAILURE_LOG.check() {
                tracing::warn!(
                    listener = %self.ctx.listener,
                    user = %untrusted(user.map_or(b"default", |u| u.as_ref())),
                    client = self.id,
                    suppressed,
                    "authentication failed"
                );
            }
        }
        result
    }

    pub(super) fn check_auth(
        &mut self,
        user: Option<&Bytes>,
        pass: &[u8],
    ) -> Result<(), &'static str> {
        if !self.ctx.users.is_empty() {
            let name: &[u8] = user.map_or(b"default", |u| u.as_ref());
            let found = self
                .ctx
                .users
                .iter()
                .position(|u| u.name.as_bytes() == name && same(u.password.as_bytes(), pass));
            let Some(i) = found else {
                return Err("WRONGPASS invalid username-password pair or user is disabled.");
            };
            // The user needs every pool the listener's route can send to.
            if !self.ctx.user_reaches(i) {
                return Err("NOPERM this user has no permissions to access this listener's pool");
            }
            self.authed = true;
            self.user = Some(i);
            return Ok(());
        }
        let Some(want) = &self.ctx.pool.config.redis_auth else {
            return Err(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        };
        let user_ok = user.is_none_or(|u| u.as_ref() == b"default");
        if user_ok && same(pass, want.as_bytes()) {
            self.authed = true;
            Ok(())
        } else {
            Err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 only (see the module doc).
    pub(super) fn hello(&mut self, args: &[Bytes]) {
        if let Some(v) = args.get(1) {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(2) => {}
                Some(_) => {
                    return self.reject("NOPROTO sorry, this protocol version is not supported")
                }
                None => {
                    return self.reject("ERR Protocol version is not an integer or out of range")
                }
            }
        }
        let mut i = 2;
        let mut setname = None;
        while i < args.len() {
            let more = args.len() - i - 1;
            if args[i].eq_ignore_ascii_case(b"auth") && more >= 2 {
                if let Err(e) = self.auth(Some(&args[i + 1]), &args[i + 2]) {
                    return self.reject(e);
                }
                i += 3;
            } else if args[i].eq_ignore_ascii_case(b"setname") && more >= 1 {
                setname = Some(args[i + 1].clone());
                i += 2;
            } else {
                let msg = format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i])
                );
                return self.reject(&msg);
            }
        }
        if !self.authed {
            return self.reject(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                 HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                 select the RESP protocol version at the same time",
            );
        }
        if let Some(n) = setname {
            self.name = (!n.is_empty()).then_some(n);
        }
        let mut out = BytesMut::new();
        resp::write_array_len(&mut out, Some(16));
        for (k, v) in [
            ("server", "redis"),
            ("version", rc::REDIS_VERSION),
            ("proto", ""),
            ("id", ""),
            ("mode", "standalone"),
            ("role", "master"),
            ("modules", ""),
            ("proxy", concat!("kvrouter ", env!("CARGO_PKG_VERSION"))),
        ] {
            resp::write_bulk(&mut out, Some(k.as_bytes()));
            match k {
                "proto" => resp::write_integer(&mut out, 2),
                "id" => resp::write_integer(&mut out, self.id as i64),
                "modules" => resp::write_array_len(&mut out, Some(0)),
                _ => resp::write_bulk(&mut out, Some(v.as_bytes())),
            }
        }
        self.reply(out.freeze());
    }

    pub(super) fn info(&self) -> String {
        let stats = &self.ctx.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        s.push_str("# Server\r\n");
        s.push_str(&format!("redis_version:{}\r\n", rc::REDIS_VERSION));
        s.push_str("redis_mode:standalone\r\n");
        s.push_str(&format!("process_id:{}\r\n", std::process::id()));
        s.push_str("\r\n# Proxy\r\n");
        s.push_str("proxy:kvrouter\r\n");
        s.push_str(&format!(
            "kvrouter_version:{}\r\n",
            env!("CARGO_PKG_VERSION")
        ));
        s.push_str(&format!("uptime_in_seconds:{}\r\n", stats.uptime_secs()));
        s.push_str(&format!("threads:{}\r\n", self.ctx.threads));
        s.push_str(&format!(
            "connected_clients:{}\r\n",
            g(&stats.curr_connections)
        ));
        s.push_str(&format!(
            "total_connections_received:{}\r\n",
            g(&stats.total_connections)
        ));
        s.push_str(&format!("client_errors:{}\r\n", g(&stats.client_errors)));
        s.push_str(&format!("server_errors:{}\r\n", g(&stats.server_errors)));
        s.push_str(&format!("pool:{}\r\n", self.ctx.pool.config.name));
        s.push_str(&format!("pools:{}\r\n", self.ctx.pools.len()));
        let now = crate::backend::health::now_ms();
        for p in &self.ctx.pools {
            let c = &p.config;
            let live = p.specs.iter().filter(|s| !s.health.is_ejected(now)).count();
            s.push_str(&format!(
                "pool_{}:protocol={},servers={},live={},distribution={:?},hash={:?}\r\n",
                c.name,
                match c.protocol {
                    crate::config::Protocol::Redis => "redis",
                    crate::config::Protocol::Memcache => "memcache",
                },
                p.specs.len(),
                live,
                c.distribution,
                c.hash
            ));
        }
        s
    }
}

/// TIME as redis answers it: `[unix seconds, microseconds]`, both as bulk strings.
pub(super) fn time_reply(now: std::time::SystemTime) -> Bytes {
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = BytesMut::with_capacity(40);
    resp::write_array_len(&mut out, Some(2));
    resp::write_bulk(&mut out, Some(d.as_secs().to_string().as_bytes()));
    resp::write_bulk(&mut out, Some(d.subsec_micros().to_string().as_bytes()));
    out.freeze()
}
