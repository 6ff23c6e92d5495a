-- Volume-weighted average price per symbol and UTC day, from every trade (late ones too).
SELECT symbol, CAST(trade_ts AS date) AS day, sum(price * volume) / sum(volume) AS vwap,
       sum(volume) AS volume, count(*) AS trades
FROM trades
GROUP BY symbol, CAST(trade_ts AS date)
HAVING sum(volume) > 0
ORDER BY symbol, day
