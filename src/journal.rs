//! Durable ledger: journal + snapshot.
