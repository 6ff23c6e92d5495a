-- The latest revision of every bars_1m bar: its final value once no late trade or feed
-- gap can change it (later revisions supersede earlier ones). gap_ms > 0: the feed was
-- not received for that long within the window, so the bar may be missing trades.
CREATE OR REPLACE VIEW bars_1m_latest AS
SELECT symbol, window_start, window_end, open, high, low, close, volume, vwap, trade_count,
       revision, gap_ms
FROM (
    SELECT b.*, row_number() OVER (PARTITION BY symbol, window_start ORDER BY revision DESC) AS rn
    FROM bars_1m b
) ranked
WHERE rn = 1
