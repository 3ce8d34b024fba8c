//! A `tokio_postgres` client whose queries are timed (feature `postgres`).
//!
//! ```no_run
//! # async fn demo(apm: &tower_apm::Apm) -> Result<(), tokio_postgres::Error> {
//! let (client, connection) = tokio_postgres::connect("host=localhost user=app dbname=shop", tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//! // One line: every query through `db` is a CLIENT span, a histogram sample,
//! // and part of its request's database time.
//! let db = tower_apm::db::postgres::Client::new(client, apm.database("postgresql").namespace("shop"));
//! let rows = db.query("SELECT id, name FROM users WHERE id = $1", &[&42_i32]).await?;
//! # Ok(()) }
//! ```
//!
//! Statements are given as text, so they can be named and sanitized; reach the
//! `tokio_postgres::Client` underneath with [`Client::inner`] for anything else
//! (its queries are then not timed).

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

use super::Database;

/// A `tokio_postgres::Client` and the [`Database`] its queries are timed as.
#[derive(Debug)]
pub struct Client {
    client: tokio_postgres::Client,
    db: Database,
}

impl Client {
    /// Wraps `client`; `db` says which database it talks to.
    pub fn new(client: tokio_postgres::Client, db: Database) -> Client {
        Client { client, db }
    }

    /// The client underneath.
    pub fn inner(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// The [`Database`] queries are timed as.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// `tokio_postgres::Client::query`, timed.
    ///
    /// # Errors
    /// The query's error, as `tokio_postgres` returns it.
    pub async fn query(&self, statement: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        self.db
            .statement(statement)
            .run(self.client.query(statement, params))
            .await
    }

    /// `tokio_postgres::Client::query_one`, timed.
    ///
    /// # Errors
    /// The query's error, or not exactly one row.
    pub async fn query_one(&self, statement: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        self.db
            .statement(statement)
            .run(self.client.query_one(statement, params))
            .await
    }

    /// `tokio_postgres::Client::query_opt`, timed.
    ///
    /// # Errors
    /// The query's error, or more than one row.
    pub async fn query_opt(&self, statement: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error> {
        self.db
            .statement(statement)
            .run(self.client.query_opt(statement, params))
            .await
    }

    /// `tokio_postgres::Client::execute`, timed: the rows it changed.
    ///
    /// # Errors
    /// The statement's error.
    pub async fn execute(&self, statement: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.db
            .statement(statement)
            .run(self.client.execute(statement, params))
            .await
    }

    /// `tokio_postgres::Client::batch_execute`, timed as one operation (named by
    /// the batch's first statement).
    ///
    /// # Errors
    /// The first statement that failed.
    pub async fn batch_execute(&self, statements: &str) -> Result<(), Error> {
        self.db
            .statement(statements)
            .run(self.client.batch_execute(statements))
            .await
    }
}
