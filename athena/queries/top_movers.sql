-- The ten symbols that moved most (close against open, in percent) on the latest day.
WITH days AS (
    SELECT symbol, CAST(window_start AS date) AS day, min(window_start) AS first_bar,
           max(window_start) AS last_bar, max(high) AS high, min(low) AS low, sum(volume) AS volume,
           sum(trade_count) AS trades
    FROM bars_1m_latest
    GROUP BY symbol, CAST(window_start AS date)
), daily AS (
    SELECT d.symbol, d.day, o.open, d.high, d.low, c.close, d.volume, d.trades
    FROM days d
    JOIN bars_1m_latest o ON o.symbol = d.symbol AND o.window_start = d.first_bar
    JOIN bars_1m_latest c ON c.symbol = d.symbol AND c.window_start = d.last_bar
)
SELECT symbol, day, open, close, round(100 * (close - open) / open, 2) AS change_pct
FROM daily
WHERE day = (SELECT max(day) FROM daily)
ORDER BY abs(close - open) / open DESC, symbol
LIMIT 10
