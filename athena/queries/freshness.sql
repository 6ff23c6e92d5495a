-- Lake freshness: the newest event time in each table and how many rows it holds.
SELECT 'trades' AS table_name, max(trade_ts) AS newest, count(*) AS row_count FROM trades
UNION ALL
SELECT 'bars_1m', max(window_end), count(*) FROM bars_1m
UNION ALL
SELECT 'quarantine', max(kafka_ts), count(*) FROM quarantine
UNION ALL
SELECT 'gaps', max(gap_end), count(*) FROM gaps
ORDER BY table_name
