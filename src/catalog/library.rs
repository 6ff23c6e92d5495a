//! The view and query library: written in Athena's (Trino's) SQL, within the part of it that
//! `stockflow sql` (DataFusion) reads the same way, so every query can be tried on a local
//! lake before it runs in Athena.

use crate::lake::Table;

/// A named SQL text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sql {
    /// File stem and, for views, the view name.
    pub name: String,
    /// The statement, with a comment saying what it answers.
    pub sql: String,
}

/// The view over a bars table that keeps each bar's latest revision: `bars_1m_latest`.
pub fn latest_view(width_ms: u64) -> String {
    format!("{}_latest", Table::Bars(width_ms).name())
}

/// One `<bars>_latest` view per bar width.
pub fn views(widths: &[u64]) -> Vec<Sql> {
    widths
        .iter()
        .map(|&w| {
            let (bars, view) = (Table::Bars(w).name(), latest_view(w));
            Sql {
                name: view.clone(),
                sql: format!(
                    "-- The latest revision of every {bars} bar: its final value once no late trade or feed\n\
                     -- gap can change it (later revisions supersede earlier ones). gap_ms > 0: the feed was\n\
                     -- not received for that long within the window, so the bar may be missing trades.\n\
                     CREATE OR REPLACE VIEW {view} AS\n\
                     SELECT symbol, window_start, window_end, open, high, low, close, volume, vwap, trade_count,\n       \
                     revision, gap_ms\n\
                     FROM (\n    \
                     SELECT b.*, row_number() OVER (PARTITION BY symbol, window_start ORDER BY revision DESC) AS rn\n    \
                     FROM {bars} b\n\
                     ) ranked\n\
                     WHERE rn = 1\n"
                ),
            }
        })
        .collect()
}

/// The query library, over the first (finest) bar width.
pub fn queries(widths: &[u64]) -> Vec<Sql> {
    let width = widths.first().copied().unwrap_or(60_000);
    let (bars, latest) = (Table::Bars(width).name(), latest_view(width));
    let daily = format!(
        "WITH days AS (\n    \
         SELECT symbol, CAST(window_start AS date) AS day, min(window_start) AS first_bar,\n           \
         max(window_start) AS last_bar, max(high) AS high, min(low) AS low, sum(volume) AS volume,\n           \
         sum(trade_count) AS trades\n    \
         FROM {latest}\n    \
         GROUP BY symbol, CAST(window_start AS date)\n\
         ), daily AS (\n    \
         SELECT d.symbol, d.day, o.open, d.high, d.low, c.close, d.volume, d.trades\n    \
         FROM days d\n    \
         JOIN {latest} o ON o.symbol = d.symbol AND o.window_start = d.first_bar\n    \
         JOIN {latest} c ON c.symbol = d.symbol AND c.window_start = d.last_bar\n\
         )\n"
    );
    let q = |name: &str, sql: String| Sql { name: name.to_owned(), sql };
    vec![
        q(
            "daily_ohlcv",
            format!(
                "-- Daily OHLCV per symbol (UTC days), rolled up from the latest {bars} bars: open of the\n\
                 -- first bar, close of the last, extremes and sums over all of them.\n\
                 {daily}SELECT symbol, day, open, high, low, close, volume, trades\n\
                 FROM daily\n\
                 ORDER BY symbol, day\n"
            ),
        ),
        q(
            "vwap_daily",
            "-- Volume-weighted average price per symbol and UTC day, from every trade (late ones too).\n\
             SELECT symbol, CAST(trade_ts AS date) AS day, sum(price * volume) / sum(volume) AS vwap,\n       \
             sum(volume) AS volume, count(*) AS trades\n\
             FROM trades\n\
             GROUP BY symbol, CAST(trade_ts AS date)\n\
             HAVING sum(volume) > 0\n\
             ORDER BY symbol, day\n"
                .to_owned(),
        ),
        q(
            "top_movers",
            format!(
                "-- The ten symbols that moved most (close against open, in percent) on the latest day.\n\
                 {daily}SELECT symbol, day, open, close, round(100 * (close - open) / open, 2) AS change_pct\n\
                 FROM daily\n\
                 WHERE day = (SELECT max(day) FROM daily)\n\
                 ORDER BY abs(close - open) / open DESC, symbol\n\
                 LIMIT 10\n"
            ),
        ),
        q(
            "trade_conditions",
            "-- Trade conditions (Finnhub's `c` codes): trades and volume per condition code.\n\
             SELECT condition, count(*) AS trades, sum(volume) AS volume\n\
             FROM trades\n\
             CROSS JOIN UNNEST(conditions) AS t (condition)\n\
             GROUP BY condition\n\
             ORDER BY trades DESC, condition\n"
                .to_owned(),
        ),
        q(
            "data_quality",
            format!(
                "-- Data quality per symbol and UTC day: feed gaps (the day each starts) and the minutes\n\
                 -- they lasted, and the latest {bars} bars they overlap with the minutes of those bars\n\
                 -- the feed was down. Days without a gap are left out.\n\
                 WITH g AS (\n    \
                 SELECT symbol, CAST(gap_start AS date) AS day, count(*) AS gaps,\n           \
                 sum(to_unixtime(gap_end) - to_unixtime(gap_start)) / 60.0 AS gap_minutes\n    \
                 FROM gaps\n    \
                 GROUP BY symbol, CAST(gap_start AS date)\n\
                 ), b AS (\n    \
                 SELECT symbol, CAST(window_start AS date) AS day, count(*) AS flagged_bars,\n           \
                 sum(gap_ms) / 60000.0 AS flagged_minutes\n    \
                 FROM {latest}\n    \
                 WHERE gap_ms > 0\n    \
                 GROUP BY symbol, CAST(window_start AS date)\n\
                 )\n\
                 SELECT g.symbol, g.day, g.gaps, round(g.gap_minutes, 3) AS gap_minutes,\n       \
                 coalesce(b.flagged_bars, 0) AS flagged_bars, round(coalesce(b.flagged_minutes, 0), 3) AS flagged_minutes\n\
                 FROM g\n\
                 LEFT JOIN b ON b.symbol = g.symbol AND b.day = g.day\n\
                 ORDER BY g.day, g.symbol\n"
            ),
        ),
        q(
            "gaps_of_day",
            "-- The feed gaps of one UTC day, in time order: the latest day with a gap (write\n\
             -- DATE 'YYYY-MM-DD' in place of the subquery for another). beyond_horizon: too old on\n\
             -- arrival to revise any bar.\n\
             SELECT symbol, gap_start, gap_end, round(to_unixtime(gap_end) - to_unixtime(gap_start), 3) AS seconds,\n       \
             reason, ingest_host, beyond_horizon\n\
             FROM gaps\n\
             WHERE CAST(gap_start AS date) = (SELECT max(CAST(gap_start AS date)) FROM gaps)\n\
             ORDER BY gap_start, symbol\n"
                .to_owned(),
        ),
        q(
            "quarantine_reasons",
            "-- Quarantined records per reason, their share of all records, and when the reason was\n\
             -- first and last seen (Kafka time).\n\
             SELECT reason, count(*) AS records,\n       \
             round(100.0 * count(*) / ((SELECT count(*) FROM trades) + (SELECT count(*) FROM quarantine)), 4) AS pct,\n       \
             min(kafka_ts) AS first_seen, max(kafka_ts) AS last_seen\n\
             FROM quarantine\n\
             GROUP BY reason\n\
             ORDER BY records DESC, reason\n"
                .to_owned(),
        ),
        q(
            "late_data",
            format!(
                "-- Late data per UTC day: trades that arrived after their window closed, and the bar\n\
                 -- revisions they caused in {bars}.\n\
                 WITH t AS (\n    \
                 SELECT CAST(trade_ts AS date) AS day, count(*) AS trades,\n           \
                 sum(CASE WHEN late THEN 1 ELSE 0 END) AS late\n    \
                 FROM trades\n    \
                 GROUP BY CAST(trade_ts AS date)\n\
                 ), r AS (\n    \
                 SELECT CAST(window_start AS date) AS day, count(*) AS bars,\n           \
                 sum(CASE WHEN revision > 0 THEN 1 ELSE 0 END) AS revised_bars, sum(revision) AS revisions\n    \
                 FROM {latest}\n    \
                 GROUP BY CAST(window_start AS date)\n\
                 )\n\
                 SELECT t.day, t.trades, t.late, round(100.0 * t.late / t.trades, 4) AS late_pct, r.bars,\n       \
                 r.revised_bars, r.revisions\n\
                 FROM t\n\
                 LEFT JOIN r ON r.day = t.day\n\
                 ORDER BY t.day\n"
            ),
        ),
        q(
            "freshness",
            format!(
                "-- Lake freshness: the newest event time in each table and how many rows it holds.\n\
                 SELECT 'trades' AS table_name, max(trade_ts) AS newest, count(*) AS row_count FROM trades\n\
                 UNION ALL\n\
                 SELECT '{bars}', max(window_end), count(*) FROM {bars}\n\
                 UNION ALL\n\
                 SELECT 'quarantine', max(kafka_ts), count(*) FROM quarantine\n\
                 UNION ALL\n\
                 SELECT 'gaps', max(gap_end), count(*) FROM gaps\n\
                 ORDER BY table_name\n"
            ),
        ),
    ]
}
