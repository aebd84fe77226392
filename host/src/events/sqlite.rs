//! The embedded event bus: deliveries in one SQLite database
//! (`<data dir>/events.sqlite3`, WAL, synchronous commits), so a queued delivery
//! survives a crash of the host.

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension as _, params};
use std::path::Path;

use super::{BusError, DeadLetter, Delivery, EventBus, HeldBytes, NewDelivery, Settlement};

/// The embedded bus.
pub struct SqliteBus {
    connection: Mutex<Connection>,
}

fn bus(error: rusqlite::Error) -> BusError {
    BusError(error.to_string())
}

impl SqliteBus {
    /// Open (or create) the bus at `path`.
    pub fn open(path: &Path) -> Result<Self, BusError> {
        let connection = crate::data_dir::open_sqlite(
            path,
            "CREATE TABLE IF NOT EXISTS deliveries (
                     event_id TEXT NOT NULL,
                     subscriber TEXT NOT NULL,
                     topic TEXT NOT NULL,
                     payload BLOB NOT NULL,
                     traceparent TEXT,
                     published_ms INTEGER NOT NULL DEFAULT 0,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     due_ms INTEGER NOT NULL DEFAULT 0,
                     dead INTEGER NOT NULL DEFAULT 0,
                     reason TEXT NOT NULL DEFAULT '',
                     PRIMARY KEY (event_id, subscriber)
                 );
                 CREATE INDEX IF NOT EXISTS due ON deliveries (dead, due_ms);",
        )
        .map_err(bus)?;
        crate::data_dir::ensure_column(
            &connection,
            "deliveries",
            "not_before_ms",
            "INTEGER NOT NULL DEFAULT 0",
        )
        .map_err(bus)?;
        crate::data_dir::ensure_column(
            &connection,
            "deliveries",
            "publisher",
            "TEXT NOT NULL DEFAULT ''",
        )
        .map_err(bus)?;
        // Claims (and backoffs) of a host that stopped: due again at once, but a
        // scheduled event still not before its time.
        connection
            .execute_batch("UPDATE deliveries SET due_ms = not_before_ms WHERE dead = 0")
            .map_err(bus)?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }
}

impl EventBus for SqliteBus {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), BusError> {
        let mut connection = self.connection.lock();
        let transaction = connection.transaction().map_err(bus)?;
        {
            let mut insert = transaction
                .prepare_cached(
                    "INSERT OR IGNORE INTO deliveries \
                     (event_id, subscriber, topic, payload, traceparent, published_ms, \
                      not_before_ms, due_ms, publisher) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                )
                .map_err(bus)?;
            for delivery in deliveries {
                insert
                    .execute(params![
                        delivery.event_id,
                        delivery.subscriber,
                        delivery.topic,
                        delivery.payload,
                        delivery.traceparent,
                        delivery.published_ms as i64,
                        delivery.deliver_at_ms as i64,
                        delivery.publisher,
                    ])
                    .map_err(bus)?;
            }
        }
        transaction.commit().map_err(bus)
    }

    fn claim_due(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
        per_subscriber: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<Delivery>, BusError> {
        let in_flight: serde_json::Map<String, serde_json::Value> = in_flight
            .iter()
            .map(|(subscriber, count)| (subscriber.clone(), (*count).into()))
            .collect();
        let in_flight = serde_json::Value::Object(in_flight).to_string();
        let mut connection = self.connection.lock();
        let transaction = connection.transaction().map_err(bus)?;
        let due: Vec<Delivery> = {
            let mut select = transaction
                .prepare_cached(
                    "SELECT event_id, subscriber, topic, payload, traceparent, attempts, \
                     published_ms, not_before_ms, publisher FROM (\
                       SELECT *, ROW_NUMBER() OVER (PARTITION BY subscriber ORDER BY due_ms) \
                         AS place FROM deliveries WHERE dead = 0 AND due_ms <= ?1) \
                     WHERE place <= ?4 - COALESCE(json_extract(?3, '$.\"' || subscriber || '\"'), 0) \
                     ORDER BY due_ms LIMIT ?2",
                )
                .map_err(bus)?;
            let rows = select
                .query_map(
                    params![now_ms as i64, limit, in_flight, per_subscriber],
                    |row| {
                        Ok(Delivery {
                            event: NewDelivery {
                                event_id: row.get(0)?,
                                publisher: row.get(8)?,
                                subscriber: row.get(1)?,
                                topic: row.get(2)?,
                                payload: row.get(3)?,
                                traceparent: row.get(4)?,
                                published_ms: row.get::<_, i64>(6)? as u64,
                                deliver_at_ms: row.get::<_, i64>(7)? as u64,
                            },
                            attempts: row.get::<_, i64>(5)? as u32,
                        })
                    },
                )
                .map_err(bus)?;
            rows.collect::<Result<_, _>>().map_err(bus)?
        };
        {
            // Claimed: not due again until the lease runs out (a delivery in flight
            // when the host dies is retried after it).
            let mut lease = transaction
                .prepare_cached(
                    "UPDATE deliveries SET due_ms = ?1 WHERE event_id = ?2 AND subscriber = ?3",
                )
                .map_err(bus)?;
            for delivery in &due {
                lease
                    .execute(params![
                        (now_ms + lease_ms) as i64,
                        delivery.event.event_id,
                        delivery.event.subscriber
                    ])
                    .map_err(bus)?;
            }
        }
        transaction.commit().map_err(bus)?;
        Ok(due)
    }

    fn settle(&self, outcomes: &[(String, String, Settlement)]) -> Result<(), BusError> {
        let mut connection = self.connection.lock();
        let transaction = connection.transaction().map_err(bus)?;
        {
            let mut acknowledge = transaction
                .prepare_cached("DELETE FROM deliveries WHERE event_id = ?1 AND subscriber = ?2")
                .map_err(bus)?;
            let mut fail = transaction
                .prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + 1, due_ms = ?3, reason = ?4, \
                     dead = (attempts + 1 >= ?5) WHERE event_id = ?1 AND subscriber = ?2",
                )
                .map_err(bus)?;
            let mut postpone = transaction
                .prepare_cached(
                    "UPDATE deliveries SET due_ms = ?3, reason = ?4 \
                     WHERE event_id = ?1 AND subscriber = ?2",
                )
                .map_err(bus)?;
            for (event_id, subscriber, outcome) in outcomes {
                match outcome {
                    Settlement::Acknowledged => {
                        acknowledge
                            .execute(params![event_id, subscriber])
                            .map_err(bus)?;
                    }
                    Settlement::Postponed { reason, next_ms } => {
                        postpone
                            .execute(params![event_id, subscriber, *next_ms as i64, reason])
                            .map_err(bus)?;
                    }
                    Settlement::Failed {
                        reason,
                        next_ms,
                        max_attempts,
                    } => {
                        fail.execute(params![
                            event_id,
                            subscriber,
                            *next_ms as i64,
                            reason,
                            max_attempts
                        ])
                        .map_err(bus)?;
                    }
                }
            }
        }
        transaction.commit().map_err(bus)
    }

    fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, BusError> {
        let connection = self.connection.lock();
        let mut select = connection
            .prepare_cached(
                "SELECT event_id, subscriber, topic, attempts, reason, length(payload) \
                 FROM deliveries WHERE dead = 1 ORDER BY event_id LIMIT ?1",
            )
            .map_err(bus)?;
        let rows = select
            .query_map([limit], |row| {
                Ok(DeadLetter {
                    event_id: row.get(0)?,
                    subscriber: row.get(1)?,
                    topic: row.get(2)?,
                    attempts: row.get::<_, i64>(3)? as u32,
                    reason: row.get(4)?,
                    payload_bytes: row.get::<_, i64>(5)? as usize,
                })
            })
            .map_err(bus)?;
        rows.collect::<Result<_, _>>().map_err(bus)
    }

    fn replay(&self, event_id: &str, subscriber: &str) -> Result<bool, BusError> {
        self.connection
            .lock()
            .execute(
                "UPDATE deliveries SET dead = 0, attempts = 0, due_ms = 0, reason = '' \
                 WHERE event_id = ?1 AND subscriber = ?2 AND dead = 1",
                params![event_id, subscriber],
            )
            .map(|changed| changed > 0)
            .map_err(bus)
    }

    fn drop_dead(&self, event_id: &str, subscriber: &str) -> Result<bool, BusError> {
        self.connection
            .lock()
            .execute(
                "DELETE FROM deliveries WHERE event_id = ?1 AND subscriber = ?2 AND dead = 1",
                params![event_id, subscriber],
            )
            .map(|changed| changed > 0)
            .map_err(bus)
    }

    fn pending(&self) -> Result<u64, BusError> {
        self.connection
            .lock()
            .query_row(
                "SELECT count(*) FROM deliveries WHERE dead = 0",
                [],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|count| count.unwrap_or(0).max(0) as u64)
            .map_err(bus)
    }

    fn held_bytes(&self) -> Result<HeldBytes, BusError> {
        let connection = self.connection.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT publisher, \
                 SUM(length(event_id) + length(topic) + length(payload)) \
                 FROM deliveries GROUP BY publisher",
            )
            .map_err(bus)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?.max(0) as u64,
                ))
            })
            .map_err(bus)?;
        let by_publisher: Vec<(String, u64)> = rows.collect::<Result<_, _>>().map_err(bus)?;
        Ok(HeldBytes {
            total: by_publisher.iter().map(|(_, bytes)| bytes).sum(),
            by_publisher,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> NewDelivery {
        NewDelivery {
            event_id: id.into(),
            publisher: "orders".into(),
            subscriber: "shipping".into(),
            topic: "order.created".into(),
            payload: b"{}".to_vec(),
            traceparent: None,
            published_ms: 0,
            deliver_at_ms: 0,
        }
    }

    fn failure(reason: &str, next_ms: u64) -> (String, String, Settlement) {
        let outcome = Settlement::Failed {
            reason: reason.into(),
            next_ms,
            max_attempts: 2,
        };
        ("e1".into(), "shipping".into(), outcome)
    }

    #[test]
    fn what_the_bus_holds_is_counted_per_publisher() {
        let dir = tempfile::tempdir().expect("dir");
        let bus = SqliteBus::open(&dir.path().join("events.sqlite3")).expect("bus");
        assert_eq!(bus.held_bytes().expect("held"), HeldBytes::default());
        let mut other = delivery("e2");
        other.publisher = "payment".into();
        other.payload = vec![b'x'; 100];
        bus.enqueue(&[delivery("e1"), other.clone()])
            .expect("enqueue");
        let mut held = bus.held_bytes().expect("held");
        held.by_publisher.sort();
        let orders = delivery("e1").bytes();
        assert_eq!(
            held,
            HeldBytes {
                total: orders + other.bytes(),
                by_publisher: vec![("orders".into(), orders), ("payment".into(), other.bytes())],
            }
        );
        bus.settle(&[("e1".into(), "shipping".into(), Settlement::Acknowledged)])
            .expect("settled");
        assert_eq!(bus.held_bytes().expect("held").total, other.bytes());
    }

    #[test]
    fn a_subscriber_gets_no_more_than_its_share_of_a_claim() {
        let dir = tempfile::tempdir().expect("dir");
        let bus = SqliteBus::open(&dir.path().join("events.sqlite3")).expect("bus");
        let backlog: Vec<NewDelivery> = (0..10).map(|n| delivery(&format!("s{n}"))).collect();
        bus.enqueue(&backlog).expect("enqueue");
        let mut other = delivery("b1");
        other.subscriber = "billing".into();
        bus.enqueue(&[other]).expect("enqueue");
        // Three each at most, one of shipping's already in flight: two of shipping's,
        // and billing's one.
        let due = bus
            .claim_due(1_000, 10_000, 10, 3, &[("shipping".to_owned(), 1)])
            .expect("due");
        let shipping = due
            .iter()
            .filter(|d| d.event.subscriber == "shipping")
            .count();
        assert_eq!((shipping, due.len()), (2, 3));
    }

    #[test]
    fn busy_subscribers_are_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        let bus = SqliteBus::open(&dir.path().join("events.sqlite3")).expect("bus");
        let mut other = delivery("e2");
        other.subscriber = "billing".into();
        bus.enqueue(&[delivery("e1"), other]).expect("enqueue");
        let due = bus
            .claim_due(1_000, 10_000, 10, 2, &[("shipping".to_owned(), 2)])
            .expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event.subscriber, "billing");
        let due = bus.claim_due(1_000, 10_000, 10, 10, &[]).expect("due");
        assert_eq!(due.len(), 1, "the skipped one is still due");
        assert_eq!(due[0].event.subscriber, "shipping");
    }

    #[test]
    fn deliveries_are_claimed_retried_buried_and_replayed() {
        let dir = tempfile::tempdir().expect("dir");
        let bus = SqliteBus::open(&dir.path().join("events.sqlite3")).expect("bus");
        bus.enqueue(&[delivery("e1"), delivery("e1")])
            .expect("enqueue");
        assert_eq!(bus.pending().expect("pending"), 1, "enqueue is idempotent");
        let due = bus.claim_due(1_000, 10_000, 10, 10, &[]).expect("due");
        assert_eq!(due.len(), 1);
        assert!(
            bus.claim_due(2_000, 10_000, 10, 10, &[])
                .expect("due")
                .is_empty(),
            "claimed"
        );
        bus.settle(&[failure("503", 3_000)]).expect("failed");
        assert_eq!(
            bus.claim_due(3_000, 10_000, 10, 10, &[]).expect("due")[0].attempts,
            1
        );
        bus.settle(&[failure("503 again", 4_000)]).expect("failed");
        assert!(
            bus.claim_due(99_000, 10_000, 10, 10, &[])
                .expect("due")
                .is_empty(),
            "dead"
        );
        let dead = bus.dead_letters(10).expect("dead");
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(dead[0].reason, "503 again");
        assert!(bus.replay("e1", "shipping").expect("replay"));
        assert_eq!(
            bus.claim_due(5_000, 10_000, 10, 10, &[])
                .expect("due")
                .len(),
            1
        );
        bus.settle(&[("e1".into(), "shipping".into(), Settlement::Acknowledged)])
            .expect("settle");
        assert_eq!(bus.pending().expect("pending"), 0);
        assert!(!bus.drop_dead("e1", "shipping").expect("drop"));
    }

    #[test]
    fn a_scheduled_delivery_waits_for_its_time_across_restarts() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("events.sqlite3");
        let bus = SqliteBus::open(&path).expect("bus");
        let mut later = delivery("e1");
        later.deliver_at_ms = 50_000;
        bus.enqueue(&[later, delivery("e2")]).expect("enqueue");
        let due = bus.claim_due(1_000, 10_000, 10, 10, &[]).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event.event_id, "e2");
        drop(bus);
        // A restart makes claims due again, but not a scheduled event before its time.
        let bus = SqliteBus::open(&path).expect("reopen");
        let due = bus.claim_due(2_000, 10_000, 10, 10, &[]).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event.event_id, "e2");
        bus.settle(&[("e2".into(), "shipping".into(), Settlement::Acknowledged)])
            .expect("settle");
        assert!(
            bus.claim_due(49_999, 10_000, 10, 10, &[])
                .expect("due")
                .is_empty()
        );
        let due = bus.claim_due(50_000, 10_000, 10, 10, &[]).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event.event_id, "e1");
        assert_eq!(due[0].event.deliver_at_ms, 50_000);
    }
}
