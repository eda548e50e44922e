//! GCRA (generic cell rate algorithm) token buckets, decided inside Redis by one Lua
//! script: one atomic round trip per decision, however many buckets it touches.
//!
//! A bucket of `requests` per `period` with capacity `burst` has an emission interval
//! `T = period / requests` and a burst tolerance `τ = burst × T`. Its state is one
//! theoretical arrival time (TAT). A decision for `hits` at time `now` computes
//! `new = max(TAT, now) + hits × T` and admits iff `new − now ≤ τ`; only an admitted
//! decision stores `new`. So over any period `P` at most `burst + requests × P / period`
//! hits pass, exactly as a token bucket that holds `burst` tokens and starts full.
//!
//! **Clock.** `now` is Redis' own `TIME` (microseconds), read inside the script: every
//! replica of the service sees one clock, so clock skew between replicas cannot hand out
//! extra tokens or stall a bucket. A clock that steps back is treated as no time passing.
//!
//! **Storage.** The TAT is stored as `"<ts>:<u>"`: at server time `ts` (integer µs) the
//! TAT was `ts + u × T`, i.e. `u ≥ 0` emission intervals (tokens) were in use. Keeping the
//! large part an exact integer and only the backlog `u` (at most `burst` plus one
//! decision's hits) in floating point keeps the arithmetic precise for every rate from
//! 1/year to 10⁹/second. Counting the backlog in tokens rather than microseconds means a
//! changed rate or burst keeps the hits already counted: raise a limit from 5 to 50 per
//! hour after one request and 49 are left. Each key expires when its bucket would be full
//! again (`PX ⌈u × T⌉ ms`), since an absent key *is* a full bucket; a decision that leaves
//! a bucket full deletes it.
//!
//! **All or nothing.** When a request has several descriptors, the script checks every
//! bucket first and stores the new TATs only if every enforcing bucket admits the hits: a
//! rejected request charges none of its limits (unlike envoyproxy/ratelimit, where the
//! other descriptors' counters still go up). Dry-run buckets never block the others; they
//! are charged when they fit. Keys that appear twice in one request see each other's
//! hits. Keys of one decision must live on one Redis node (no Redis Cluster yet).

use crate::limits::Quota;
use std::time::Duration;

/// The decision script. `KEYS[i]`: bucket `i`. `ARGV[5i-4 .. 5i]` for bucket `i`:
/// `T` (µs per token), burst, hits, enforcing (1/0), refund (1/0). Returns `committed`
/// (1/0), then per bucket: fits (1/0), tokens in use before, tokens in use after if it
/// fits.
pub const SCRIPT: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local used = {}
local interval = {}
local dirty = {}
local out = {'1'}
local blocked = false
for i, key in ipairs(KEYS) do
  local b = 5 * (i - 1)
  local T = tonumber(ARGV[b + 1])
  local burst = tonumber(ARGV[b + 2])
  local hits = tonumber(ARGV[b + 3])
  local enforcing = ARGV[b + 4] == '1'
  local refund = ARGV[b + 5] == '1'
  local u = used[key]
  if u == nil then
    u = 0
    local v = redis.call('GET', key)
    if v then
      local ts, su = string.match(v, '^(%d+):(.+)$')
      ts = tonumber(ts)
      su = tonumber(su)
      if ts and su then
        local elapsed = now - ts
        if elapsed < 0 then elapsed = 0 end
        u = su - elapsed / T
        if u < 0 then u = 0 end
      end
    end
  end
  local after
  local fits
  if refund then
    after = u - hits
    if after < 0 then after = 0 end
    fits = true
  else
    after = u + hits
    fits = after <= burst + 1e-4
  end
  if fits then
    used[key] = after
    interval[key] = T
    if hits > 0 then dirty[key] = true end
  else
    used[key] = u
    if enforcing then blocked = true end
  end
  out[#out + 1] = fits and '1' or '0'
  out[#out + 1] = string.format('%.17g', u)
  out[#out + 1] = string.format('%.17g', after)
end
if blocked then
  out[1] = '0'
else
  for key in pairs(dirty) do
    local u = used[key]
    if u <= 0 then
      redis.call('DEL', key)
    else
      local ms = math.ceil(u * interval[key] / 1000) + 1
      redis.call('SET', key, string.format('%d:%.17g', now, u), 'PX', string.format('%d', ms))
    end
  end
end
return out
"#;

/// Slack for floating-point rounding when comparing tokens in use with the burst (as in
/// the script).
const EPSILON_TOKENS: f64 = 1e-4;

/// One bucket's part of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketCall {
    /// Full Redis key (with the server's prefix).
    pub key: String,
    pub quota: Quota,
    /// Tokens to take (0: just look).
    pub hits: u64,
    /// A rejection by this bucket rejects the whole request (false for dry-run limits).
    pub enforcing: bool,
    /// Give `hits` tokens back instead of taking them (Envoy's `is_negative_hits`).
    pub refund: bool,
}

/// `KEYS` and `ARGV` of [`SCRIPT`] for `calls`.
pub fn script_args(calls: &[BucketCall]) -> (Vec<&str>, Vec<String>) {
    let keys = calls.iter().map(|c| c.key.as_str()).collect();
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let argv = calls
        .iter()
        .flat_map(|c| {
            [
                c.quota.emission_interval_us().to_string(),
                c.quota.burst.to_string(),
                c.hits.to_string(),
                flag(c.enforcing),
                flag(c.refund),
            ]
        })
        .collect();
    (keys, argv)
}

/// One bucket's result from the script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketReply {
    /// The hits fit (or it was a refund).
    pub fits: bool,
    /// Tokens in use (`(TAT − now) / T`) before the decision.
    pub before: f64,
    /// Tokens in use after taking the hits (stored only if they fit and the decision was
    /// committed).
    pub after: f64,
}

/// The script's whole answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptReply {
    /// Every enforcing bucket admitted the hits, and the new TATs were stored.
    pub committed: bool,
    /// In the order of the calls.
    pub buckets: Vec<BucketReply>,
}

/// The script answered something else than [`SCRIPT`] returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from the rate-limit script: {0}")]
pub struct ReplyError(pub String);

impl ScriptReply {
    /// Parses the script's answer for `n` buckets.
    pub fn parse(reply: &[String], n: usize) -> Result<Self, ReplyError> {
        if reply.len() != 1 + 3 * n {
            return Err(ReplyError(format!("{} items for {n} buckets", reply.len())));
        }
        let flag = |s: &str| match s {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(ReplyError(format!("flag {other:?}"))),
        };
        let num = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| ReplyError(format!("tokens in use {s:?}")))
        };
        let committed = flag(&reply[0])?;
        let buckets = reply[1..]
            .chunks(3)
            .map(|c| {
                Ok(BucketReply {
                    fits: flag(&c[0])?,
                    before: num(&c[1])?,
                    after: num(&c[2])?,
                })
            })
            .collect::<Result<_, ReplyError>>()?;
        Ok(Self { committed, buckets })
    }
}

/// A bucket as the client sees it after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketView {
    /// Whole tokens left.
    pub remaining: u64,
    /// Until the bucket is full again (Envoy's `duration_until_reset`).
    pub until_full: Duration,
    /// Until one more whole token (zero when full): the `t` of the `RateLimit` field.
    pub next_token: Duration,
    /// For hits that did not fit: until they would. `None` when they never can (more hits
    /// than the burst).
    pub retry_after: Option<Duration>,
}

/// A backlog in µs as a duration (negative or non-finite: zero).
fn micros(us: f64) -> Duration {
    if us.is_finite() && us > 0.0 {
        Duration::from_secs_f64((us / 1e6).min(1e15))
    } else {
        Duration::ZERO
    }
}

/// What `quota`'s bucket looks like after a decision for `hits`: `stored` says whether the
/// state after the hits was stored (else the one before still holds).
pub fn view(quota: &Quota, hits: u64, reply: &BucketReply, stored: bool) -> BucketView {
    let t = quota.emission_interval_us();
    let burst = quota.burst as f64;
    let used = if stored { reply.after } else { reply.before };
    let remaining = (burst - used + EPSILON_TOKENS).floor().clamp(0.0, burst) as u64;
    let next_token = if remaining >= quota.burst {
        Duration::ZERO
    } else {
        micros((used - (burst - remaining as f64 - 1.0)) * t)
    };
    let retry_after = (!reply.fits)
        .then(|| (hits <= quota.burst).then(|| micros((reply.before + hits as f64 - burst) * t)));
    BucketView {
        remaining,
        until_full: micros(used * t),
        next_token,
        retry_after: retry_after.flatten(),
    }
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Period;

    fn q(requests: u64, period: Period, burst: u64) -> Quota {
        Quota {
            requests,
            period,
            burst,
        }
    }

    #[test]
    fn args_carry_interval_burst_hits_and_flags() {
        let calls = [
            BucketCall {
                key: "p:a".into(),
                quota: q(100, Period::Second, 50),
                hits: 1,
                enforcing: true,
                refund: false,
            },
            BucketCall {
                key: "p:b".into(),
                quota: q(3, Period::Second, 3),
                hits: 2,
                enforcing: false,
                refund: true,
            },
        ];
        let (keys, argv) = script_args(&calls);
        assert_eq!(keys, vec!["p:a", "p:b"]);
        assert_eq!(
            argv,
            vec![
                "10000",
                "50",
                "1",
                "1",
                "0",
                "333333.3333333333",
                "3",
                "2",
                "0",
                "1"
            ]
        );
    }

    #[test]
    fn replies_parse_strictly() {
        let r: Vec<String> = ["1", "1", "0", "1", "0", "2.5e+01", "3.5e+01"]
            .map(String::from)
            .to_vec();
        let p = ScriptReply::parse(&r, 2).unwrap();
        assert!(p.committed);
        assert_eq!(
            p.buckets[1],
            BucketReply {
                fits: false,
                before: 25.0,
                after: 35.0
            }
        );
        assert!(ScriptReply::parse(&r, 1).is_err());
        let bad: Vec<String> = ["1", "2", "0", "0"].map(String::from).to_vec();
        assert!(ScriptReply::parse(&bad, 1).is_err());
        let bad: Vec<String> = ["1", "1", "-1", "0"].map(String::from).to_vec();
        assert!(ScriptReply::parse(&bad, 1).is_err());
        let bad: Vec<String> = ["1", "1", "nan", "0"].map(String::from).to_vec();
        assert!(ScriptReply::parse(&bad, 1).is_err());
    }

    fn reply(fits: bool, before: f64, after: f64) -> BucketReply {
        BucketReply {
            fits,
            before,
            after,
        }
    }

    #[test]
    fn views_count_whole_tokens() {
        let quota = q(100, Period::Second, 50); // T = 10 ms
                                                // Fresh bucket, one hit: 49 left, full again in 10 ms, next token in 10 ms.
        let v = view(&quota, 1, &reply(true, 0.0, 1.0), true);
        assert_eq!(v.remaining, 49);
        assert_eq!(v.until_full, Duration::from_millis(10));
        assert_eq!(v.next_token, Duration::from_millis(10));
        assert_eq!(v.retry_after, None);
        // Not stored (another bucket rejected the request): still full.
        let v = view(&quota, 1, &reply(true, 0.0, 1.0), false);
        assert_eq!(
            (v.remaining, v.until_full, v.next_token),
            (50, Duration::ZERO, Duration::ZERO)
        );
        // 2.5 tokens in use: 47 whole left, the next one in 5 ms.
        let v = view(&quota, 1, &reply(true, 1.5, 2.5), true);
        assert_eq!(v.remaining, 47);
        assert_eq!(v.next_token, Duration::from_millis(5));
        assert_eq!(v.until_full, Duration::from_millis(25));
        // Nearly empty: 3 hits need 3 tokens; 0.5 is there: 25 ms to wait.
        let v = view(&quota, 3, &reply(false, 49.5, 52.5), false);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after, Some(Duration::from_millis(25)));
        assert_eq!(v.next_token, Duration::from_millis(5));
        // More hits than the burst never fit.
        let v = view(&quota, 51, &reply(false, 0.0, 51.0), false);
        assert_eq!((v.remaining, v.retry_after), (50, None));
        // Rounding noise of a third: three hits of 1/3 s fill a burst of 3 exactly.
        let third = q(3, Period::Second, 3);
        let v = view(&third, 1, &reply(true, 2.0 - 1e-12, 3.0 - 1e-12), true);
        assert_eq!(v.remaining, 0);
        assert_eq!(ceil_secs(v.next_token), 1);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(micros(f64::NAN), Duration::ZERO);
        assert_eq!(micros(-5.0), Duration::ZERO);
    }
}
