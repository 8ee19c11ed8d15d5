//! Limits that protect the relay from its clients: how many connections it serves (in total,
//! per tenant, per client IP), and how fast one connection or one tenant may write (writes and
//! bytes per second).
//!
//! Connection limits refuse the upgrade (HTTP 503 when the relay is full, 429 for a tenant or
//! an address over its share). Rate limits never close anything: a connection over its rate is
//! slowed. The session keeps sending Acks for what it has read and keeps its subscriptions
//! flowing, but stops reading the client's frames (its Pings included) until what it sent is
//! paid for, so TCP backpressure slows the client down.
//! A v3 client never reconnects after a close, so a close would lose it for good.
//!
//! Rates use the GCRA limiters of `governor`: a bucket of one second's allowance that refills
//! continuously. A message is let through first and paid for after; the debt is paid in
//! installments of at most one bucket, so no message is too large to ever pass.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::config::{LimitsConfig, TenantId};

/// Why an upgrade was refused for lack of room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitRefusal {
    #[error("the relay is serving its maximum of {0} connections; try again later")]
    Relay(usize),
    #[error("this tenant already has its maximum of {0} connections")]
    Tenant(usize),
    #[error("this address already has its maximum of {0} connections")]
    Address(usize),
}

impl LimitRefusal {
    /// 503 when the relay as a whole is full, 429 when one tenant or address has its share.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Relay(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Tenant(_) | Self::Address(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Connection counts and the per-tenant rate limiters of a running relay.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    total: AtomicUsize,
    tenants: DashMap<TenantId, TenantShare>,
    addresses: DashMap<IpAddr, usize>,
}

/// A tenant's connections and the rates they share; gone with its last connection.
#[derive(Debug)]
struct TenantShare {
    connections: usize,
    rates: Arc<Rates>,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            total: AtomicUsize::new(0),
            tenants: DashMap::new(),
            addresses: DashMap::new(),
        }
    }

    /// Connections being served.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections of `tenant` being served.
    pub fn tenant_connections(&self, tenant: &TenantId) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |share| share.connections)
    }

    /// Takes a connection slot for `tenant` from `ip` (an IPv6 address counts for its /64),
    /// or says which limit is full. The slot
    /// is given back when the returned [`Slot`] is dropped.
    pub fn admit(self: &Arc<Self>, tenant: &TenantId, ip: IpAddr) -> Result<Slot, LimitRefusal> {
        let c = &self.config;
        let ip = client_key(ip);
        let under = |n: usize, max: usize| max == 0 || n < max;
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                under(n, c.max_connections).then_some(n + 1)
            })
            .map_err(|_| LimitRefusal::Relay(c.max_connections))?;
        // From here on, a refusal gives back what was taken when `slot` drops.
        let mut slot = Slot {
            limits: self.clone(),
            tenant: None,
            ip: None,
        };
        {
            let mut share = self
                .tenants
                .entry(tenant.clone())
                .or_insert_with(|| TenantShare {
                    connections: 0,
                    rates: Arc::new(Rates::new(
                        c.writes_per_second_per_tenant,
                        c.bytes_per_second_per_tenant,
                    )),
                });
            if !under(share.connections, c.max_connections_per_tenant) {
                // Full means it has connections: the share stays, and nothing was counted.
                // (The map's lock goes before `slot` gives back its relay-wide place.)
                drop(share);
                return Err(LimitRefusal::Tenant(c.max_connections_per_tenant));
            }
            share.connections += 1;
            slot.tenant = Some((tenant.clone(), share.rates.clone()));
        }
        {
            let mut n = self.addresses.entry(ip).or_insert(0);
            if !under(*n, c.max_connections_per_ip) {
                // Full means it has connections: the entry stays, and nothing was counted.
                drop(n);
                return Err(LimitRefusal::Address(c.max_connections_per_ip));
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    /// Drops the tenant's share once no connection holds it.
    fn release_tenant(&self, tenant: &TenantId) {
        self.tenants.remove_if_mut(tenant, |_, share| {
            share.connections = share.connections.saturating_sub(1);
            share.connections == 0
        });
    }
}

/// What the per-address limit counts: an IPv4 address (also when it arrives IPv4-mapped on an
/// IPv6 socket), or the /64 of an IPv6 address, which one client usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// One admitted connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    tenant: Option<(TenantId, Arc<Rates>)>,
    ip: Option<IpAddr>,
}

impl Slot {
    /// The rate limiter of this connection, which also charges its tenant's shared rates.
    pub fn throttle(&self) -> Throttle {
        let c = &self.limits.config;
        Throttle {
            connection: Rates::new(
                c.writes_per_second_per_connection,
                c.bytes_per_second_per_connection,
            ),
            tenant: self.tenant.as_ref().map(|(_, rates)| rates.clone()),
            owed: [0; 4],
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.limits.addresses.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
        if let Some((tenant, _)) = &self.tenant {
            self.limits.release_tenant(tenant);
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes and bytes per second; `None` for a limit that is off.
#[derive(Debug)]
struct Rates {
    writes: Option<Rate>,
    bytes: Option<Rate>,
}

impl Rates {
    fn new(writes: u32, bytes: u32) -> Self {
        Self {
            writes: Rate::per_second(writes),
            bytes: Rate::per_second(bytes),
        }
    }
}

/// One GCRA limiter whose bucket holds one second's allowance.
#[derive(Debug)]
struct Rate {
    limiter: DefaultDirectRateLimiter,
    burst: NonZeroU32,
}

impl Rate {
    fn per_second(rate: u32) -> Option<Self> {
        let rate = NonZeroU32::new(rate)?;
        Some(Self {
            limiter: DefaultDirectRateLimiter::direct(Quota::per_second(rate)),
            burst: rate,
        })
    }

    /// Pays what it can of `owed` cells now: installments of at most one bucket, halved while
    /// the bucket holds less, down to a sixteenth of it. So a large debt is paid as the bucket
    /// refills, even while small payers of the same tenant keep it low, and a paused
    /// connection wakes at most about sixteen times a second. How long until the next
    /// installment can be paid, if some remain.
    fn pay(&self, owed: &mut u64, clock: &DefaultClock) -> Option<Duration> {
        let burst = u64::from(self.burst.get());
        let floor = (burst / 16).max(1);
        let mut n = burst;
        while *owed > 0 {
            let cells = NonZeroU32::new(u32::try_from(n.min(*owed)).unwrap_or(u32::MAX))?;
            match self.limiter.check_n(cells) {
                Ok(Ok(())) => *owed -= u64::from(cells.get()),
                Ok(Err(_)) if n > floor => n = (n / 2).max(floor),
                Ok(Err(not_until)) => return Some(not_until.wait_time_from(clock.now())),
                // Cannot happen (n never exceeds the burst); forgive rather than stall forever.
                Err(_) => *owed = 0,
            }
        }
        None
    }
}

/// One connection's rate limiting: what it sent is charged to its own rates and its
/// tenant's, and [`Throttle::settle`] says how long to stop reading until that is paid.
#[derive(Debug)]
pub struct Throttle {
    connection: Rates,
    tenant: Option<Arc<Rates>>,
    /// Owed to: connection writes, connection bytes, tenant writes, tenant bytes.
    owed: [u64; 4],
}

impl Throttle {
    /// A message of `bytes` bytes arrived.
    pub fn charge_bytes(&mut self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.owed[1] = self.owed[1].saturating_add(bytes);
        self.owed[3] = self.owed[3].saturating_add(bytes);
    }

    /// A write arrived.
    pub fn charge_write(&mut self) {
        self.owed[0] = self.owed[0].saturating_add(1);
        self.owed[2] = self.owed[2].saturating_add(1);
    }

    /// Pays what the rates allow now. `None` when everything is paid (read on); otherwise how
    /// long to wait before settling again.
    pub fn settle(&mut self) -> Option<Duration> {
        let tenant = self.tenant.as_deref();
        let limiters = [
            self.connection.writes.as_ref(),
            self.connection.bytes.as_ref(),
            tenant.and_then(|t| t.writes.as_ref()),
            tenant.and_then(|t| t.bytes.as_ref()),
        ];
        let clock = DefaultClock::default();
        let mut wait = None;
        for (owed, limiter) in self.owed.iter_mut().zip(limiters) {
            let Some(limiter) = limiter else {
                *owed = 0;
                continue;
            };
            if let Some(w) = limiter.pay(owed, &clock) {
                wait = Some(wait.map_or(w, |v: Duration| v.max(w)));
            }
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).expect("tenant")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn connection_slots_are_counted_and_given_back() {
        let limits = Arc::new(Limits::new(LimitsConfig {
            max_connections: 3,
            max_connections_per_tenant: 2,
            max_connections_per_ip: 2,
            ..LimitsConfig::default()
        }));
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let s1 = limits.admit(&tenant("t1"), a).expect("first");
        let s2 = limits.admit(&tenant("t1"), b).expect("second");
        for _ in 0..3 {
            // Refusals count nothing: the tenant stays full.
            assert_eq!(
                limits.admit(&tenant("t1"), b).err(),
                Some(LimitRefusal::Tenant(2))
            );
        }
        let s3 = limits.admit(&tenant("t2"), a).expect("third");
        assert_eq!(
            limits.admit(&tenant("t3"), b).err(),
            Some(LimitRefusal::Relay(3))
        );
        drop(s2);
        for _ in 0..3 {
            assert_eq!(
                limits.admit(&tenant("t3"), a).err(),
                Some(LimitRefusal::Address(2))
            );
        }
        assert_eq!(limits.connections(), 2, "refusals hold no place");
        let s4 = limits.admit(&tenant("t3"), b).expect("a place came free");
        assert_eq!(limits.connections(), 3);
        drop((s1, s3, s4));
        assert_eq!(limits.connections(), 0);
        assert!(limits.tenants.is_empty() && limits.addresses.is_empty());
    }

    #[test]
    fn an_ipv6_client_counts_for_its_slash_64() {
        let limits = Arc::new(Limits::new(LimitsConfig {
            max_connections_per_ip: 1,
            ..LimitsConfig::default()
        }));
        let _a = limits
            .admit(&tenant("t"), ip("2001:db8:1:2::1"))
            .expect("first");
        assert_eq!(
            limits.admit(&tenant("t"), ip("2001:db8:1:2:ffff::9")).err(),
            Some(LimitRefusal::Address(1))
        );
        let _b = limits
            .admit(&tenant("t"), ip("2001:db8:1:3::1"))
            .expect("another /64");
        let _c = limits.admit(&tenant("t"), ip("192.0.2.1")).expect("v4");
        assert_eq!(
            limits.admit(&tenant("t"), ip("::ffff:192.0.2.1")).err(),
            Some(LimitRefusal::Address(1)),
            "IPv4-mapped is the same client"
        );
    }

    #[test]
    fn a_large_debt_is_paid_as_the_bucket_refills() {
        let rate = Rate::per_second(1_000).expect("rate");
        let clock = DefaultClock::default();
        // Someone else left 300 cells in the bucket: a debt of 2,000 pays what fits now (in
        // installments of 62 cells and up), and then waits for one more installment only.
        let mut other = 700;
        assert_eq!(rate.pay(&mut other, &clock), None);
        let mut owed = 2_000;
        let wait = rate.pay(&mut owed, &clock).expect("in debt");
        assert!(
            owed <= 2_000 - 200,
            "paid most of what the bucket held: {owed} left"
        );
        assert!(
            wait >= Duration::from_millis(10) && wait <= Duration::from_millis(63),
            "waits for a sixteenth of the bucket: {wait:?}"
        );
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = Arc::new(Limits::new(LimitsConfig {
            max_connections: 0,
            max_connections_per_tenant: 0,
            max_connections_per_ip: 0,
            writes_per_second_per_connection: 0,
            bytes_per_second_per_connection: 0,
            writes_per_second_per_tenant: 0,
            bytes_per_second_per_tenant: 0,
        }));
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let slots: Vec<_> = (0..100)
            .map(|_| limits.admit(&tenant("t"), ip).expect("admitted"))
            .collect();
        let mut throttle = slots[0].throttle();
        for _ in 0..10_000 {
            throttle.charge_write();
            throttle.charge_bytes(1 << 20);
        }
        assert_eq!(throttle.settle(), None);
    }

    #[test]
    fn a_connection_over_its_rate_owes_time_and_large_messages_pay_over_time() {
        let limits = Arc::new(Limits::new(LimitsConfig {
            writes_per_second_per_connection: 10,
            bytes_per_second_per_connection: 1_000,
            writes_per_second_per_tenant: 0,
            bytes_per_second_per_tenant: 0,
            ..LimitsConfig::default()
        }));
        let slot = limits
            .admit(&tenant("t"), "127.0.0.1".parse().expect("ip"))
            .expect("slot");
        let mut throttle = slot.throttle();
        for _ in 0..10 {
            throttle.charge_write();
            assert_eq!(throttle.settle(), None, "the burst is one second's rate");
        }
        throttle.charge_write();
        let wait = throttle.settle().expect("over the rate");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );

        // 3.5 s worth of bytes in one message: it passes, one bucket is paid at once, and the
        // rest is paid a sixteenth of a bucket (62 bytes, 62 ms) at a time.
        let mut big = slot.throttle();
        big.charge_bytes(3_500);
        let wait = big.settle().expect("in debt");
        assert_eq!(big.owed[1], 2_500, "{:?}", big.owed);
        assert!(
            wait >= Duration::from_millis(50) && wait <= Duration::from_millis(63),
            "{wait:?}"
        );
    }

    #[test]
    fn the_tenant_rate_is_shared_by_its_connections() {
        let limits = Arc::new(Limits::new(LimitsConfig {
            writes_per_second_per_connection: 0,
            bytes_per_second_per_connection: 0,
            writes_per_second_per_tenant: 4,
            bytes_per_second_per_tenant: 0,
            ..LimitsConfig::default()
        }));
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let (a, b) = (
            limits.admit(&tenant("t"), ip).expect("a"),
            limits.admit(&tenant("t"), ip).expect("b"),
        );
        let other = limits.admit(&tenant("u"), ip).expect("other tenant");
        let (mut ta, mut tb, mut to) = (a.throttle(), b.throttle(), other.throttle());
        for _ in 0..2 {
            ta.charge_write();
            tb.charge_write();
            assert_eq!(ta.settle(), None);
            assert_eq!(tb.settle(), None);
        }
        tb.charge_write();
        assert!(tb.settle().is_some(), "the tenant's four writes are spent");
        to.charge_write();
        assert_eq!(to.settle(), None, "another tenant is not affected");
    }
}
