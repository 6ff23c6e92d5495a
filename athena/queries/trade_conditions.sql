-- Trade conditions (Finnhub's `c` codes): trades and volume per condition code.
SELECT condition, count(*) AS trades, sum(volume) AS volume
FROM trades
CROSS JOIN UNNEST(conditions) AS t (condition)
GROUP BY condition
ORDER BY trades DESC, condition
