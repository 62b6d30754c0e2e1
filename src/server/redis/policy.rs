//! The command policy of a redis listener, applied in one place before anything is routed:
//! what the command table refuses outright, what a pool must opt into (`allow_commands`), and
//! scripts (`scripts: false`). A command reaching more than one pool (a route tree) needs every
//! one of them to allow it.

use super::*;
use crate::config::PoolConfig;

/// The reply to a command the table refuses: it names the command, why, and what to do.
pub(super) fn refusal(info: &CommandInfo, why: &str) -> String {
    format!(
        "ERR {} is not supported by kvrouter: {why}",
        info.name.replace('|', " ").to_uppercase()
    )
}

impl Conn {
    /// The error reply refusing this request, or None when it may go ahead.
    pub(super) fn refused(&self, info: &CommandInfo, handling: Handling) -> Option<String> {
        if let Handling::Refuse(why) = handling {
            return Some(refusal(info, why));
        }
        let gated = rc::opt_in(info);
        let script = rc::is_script(info);
        if gated.is_none() && !script {
            return None;
        }
        let name = info.name.replace('|', " ").to_uppercase();
        self.pools_reached().find_map(|pool| {
            if let Some(why) = gated.filter(|_| !pool.allow_commands.iter().any(|c| c == info.name))
            {
                return Some(format!(
                    "ERR {name} is disabled on pool {} (allow_commands): {why}; add \
                     `allow_commands: [{}]` to the pool to enable it",
                    pool.name, info.name
                ));
            }
            (script && !pool.scripts).then(|| {
                format!(
                    "ERR {name} is disabled on pool {} (scripts: false): a script can run \
                     commands kvrouter refuses; set `scripts: true` on the pool to enable scripts",
                    pool.name
                )
            })
        })
    }

    /// The listener's pool and every pool its route can send to.
    fn pools_reached(&self) -> impl Iterator<Item = &PoolConfig> {
        let ctx = &self.ctx;
        std::iter::once(&ctx.pool.config).chain(
            ctx.pools
                .iter()
                .filter(|p| ctx.reach.contains(&p.config.name))
                .map(|p| &p.config),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::config::GATED_COMMANDS;
    use crate::protocol::redis_commands::OPT_IN;

    /// The config accepts in `allow_commands` exactly what the policy gates.
    #[test]
    fn config_and_table_agree_on_opt_in_commands() {
        let table: Vec<&str> = OPT_IN.iter().map(|(n, _)| *n).collect();
        assert_eq!(GATED_COMMANDS, table.as_slice());
    }
}
