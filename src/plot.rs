//! `stockflow plot`: a candlestick chart with volume bars of one symbol, from the latest
//! revision of every bar in the lake, as SVG.

use std::path::Path;

use arrow::array::{Array, Float64Array, TimestampMillisecondArray};
use plotters::prelude::*;

use crate::iceberg::IcebergCatalog;
use crate::lake::LakeOptions;
use crate::sql::{SqlEngine, SqlError};

/// Rising bars (close above open): body and volume colour.
pub const GAIN: RGBColor = RGBColor(0x26, 0xa6, 0x9a);
/// Falling or flat bars.
pub const LOSS: RGBColor = RGBColor(0xef, 0x53, 0x50);

/// What to draw.
#[derive(Clone, Debug)]
pub struct PlotConfig {
    /// The symbol.
    pub symbol: String,
    /// Bar width, ms (selects the `bars_<w>` table).
    pub width_ms: u64,
    /// First window start to draw, ms since the epoch (inclusive).
    pub from_ms: Option<i64>,
    /// Last window start to draw, ms since the epoch (exclusive).
    pub to_ms: Option<i64>,
    /// Image size in pixels.
    pub size: (u32, u32),
}

/// One bar as drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candle {
    /// Window start, ms.
    pub start: i64,
    /// Open price.
    pub open: f64,
    /// High price.
    pub high: f64,
    /// Low price.
    pub low: f64,
    /// Close price.
    pub close: f64,
    /// Volume.
    pub volume: f64,
}

impl Candle {
    /// Whether the bar closed above its open (drawn in [`GAIN`]).
    pub fn rising(&self) -> bool {
        self.open < self.close
    }
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Reading the lake failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// The lake has no bars table of that width.
    #[error("the lake has no {0} table (bar widths there: {1})")]
    NoTable(String, String),
    /// Nothing to draw.
    #[error("no bars for {symbol} in {table}{range}")]
    Empty {
        /// The symbol.
        symbol: String,
        /// The table read.
        table: String,
        /// The time range asked for, if any.
        range: String,
    },
    /// A column had an unexpected type.
    #[error("column {0} of the bars view has an unexpected type")]
    Column(&'static str),
    /// Drawing or writing the file failed.
    #[error("drawing {path}: {reason}")]
    Draw {
        /// The output file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Reads the latest revision of every bar of `cfg.symbol` in the range, oldest first.
pub async fn load(
    lake: &str,
    options: &LakeOptions,
    catalog: Option<IcebergCatalog>,
    cfg: &PlotConfig,
) -> Result<Vec<Candle>, PlotError> {
    let engine = SqlEngine::open(lake, options, catalog).await?;
    let table = crate::lake::Table::Bars(cfg.width_ms).name();
    if !engine.bar_widths.contains(&cfg.width_ms) {
        let widths: Vec<String> = engine.bar_widths.iter().map(|w| crate::lake::Table::Bars(*w).name()).collect();
        return Err(PlotError::NoTable(table, widths.join(", ")));
    }
    let view = crate::catalog::library::latest_view(cfg.width_ms);
    let symbol = cfg.symbol.replace('\'', "''");
    let batches = engine
        .query(&format!(
            "SELECT window_start, open, high, low, close, volume FROM {view} \
             WHERE symbol = '{symbol}' ORDER BY window_start"
        ))
        .await?;
    let mut candles = Vec::new();
    for batch in &batches {
        let start = column::<TimestampMillisecondArray>(batch, 0, "window_start")?;
        let [open, high, low, close, volume] = [(1, "open"), (2, "high"), (3, "low"), (4, "close"), (5, "volume")]
            .map(|(i, name)| column::<Float64Array>(batch, i, name));
        let (open, high, low, close, volume) = (open?, high?, low?, close?, volume?);
        for i in 0..batch.num_rows() {
            let t = start.value(i);
            if cfg.from_ms.is_some_and(|f| t < f) || cfg.to_ms.is_some_and(|to| t >= to) {
                continue;
            }
            candles.push(Candle {
                start: t,
                open: open.value(i),
                high: high.value(i),
                low: low.value(i),
                close: close.value(i),
                volume: volume.value(i),
            });
        }
    }
    if candles.is_empty() {
        let range = match (cfg.from_ms, cfg.to_ms) {
            (None, None) => String::new(),
            (f, t) => format!(" between {} and {}", stamp(f), stamp(t)),
        };
        return Err(PlotError::Empty { symbol: cfg.symbol.clone(), table, range });
    }
    Ok(candles)
}

fn column<'a, A: Array + 'static>(
    batch: &'a arrow::record_batch::RecordBatch,
    index: usize,
    name: &'static str,
) -> Result<&'a A, PlotError> {
    batch.column(index).as_any().downcast_ref::<A>().ok_or(PlotError::Column(name))
}

fn stamp(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| "…".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

/// Draws `candles` (oldest first, non-empty) to an SVG file at `out`: price candles above,
/// volume bars below, times in UTC.
pub fn render(candles: &[Candle], cfg: &PlotConfig, out: &Path) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw { path: out.display().to_string(), reason: e.to_string() };
    let (Some(first), Some(last)) = (candles.first(), candles.last()) else {
        return Err(PlotError::Empty { symbol: cfg.symbol.clone(), table: String::new(), range: String::new() });
    };
    let width = cfg.width_ms as i64;
    let x_range = (first.start - width / 2)..(last.start + width + width / 2);
    let low = candles.iter().map(|c| c.low).fold(f64::INFINITY, f64::min);
    let high = candles.iter().map(|c| c.high).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((high - low) * 0.05).max(high.abs() * 1e-4).max(1e-9);
    let max_volume = candles.iter().map(|c| c.volume).fold(0.0, f64::max).max(1e-9);
    let span_ms = x_range.end - x_range.start;
    let time_format = if span_ms > 2 * 86_400_000 { "%m-%d %H:%M" } else { "%H:%M" };
    let label_time = move |t: &i64| {
        chrono::DateTime::from_timestamp_millis(*t).map_or_else(String::new, |d| d.format(time_format).to_string())
    };
    // Bodies fill most of their slot; never thinner than a hairline.
    let plot_px = cfg.size.0.saturating_sub(100).max(1) as f64;
    let body_px = ((plot_px / candles.len() as f64) * 0.7).clamp(1.0, 40.0) as u32;

    let root = SVGBackend::new(out, cfg.size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let title = format!(
        "{} · {} bars · {} – {} UTC",
        cfg.symbol,
        humantime::format_duration(std::time::Duration::from_millis(cfg.width_ms)),
        stamp(Some(first.start)),
        stamp(Some(last.start + width))
    );
    let root = root.titled(&title, ("sans-serif", 22)).map_err(|e| fail(&e))?;
    let (upper, lower) = root.split_vertically((72).percent());

    let mut price = ChartBuilder::on(&upper)
        .margin(10)
        .x_label_area_size(0)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), (low - pad)..(high + pad))
        .map_err(|e| fail(&e))?;
    price
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .y_desc("price")
        .y_label_formatter(&|p| format!("{p:.2}"))
        .draw()
        .map_err(|e| fail(&e))?;
    price
        .draw_series(candles.iter().map(|c| {
            CandleStick::new(c.start + width / 2, c.open, c.high, c.low, c.close, GAIN.filled(), LOSS.filled(), body_px)
        }))
        .map_err(|e| fail(&e))?;

    let mut volume = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, 0.0..max_volume * 1.1)
        .map_err(|e| fail(&e))?;
    volume
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .y_desc("volume")
        .x_labels(8)
        .x_label_formatter(&label_time)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;
    volume
        .draw_series(candles.iter().map(|c| {
            let colour = if c.rising() { GAIN } else { LOSS };
            let inset = width / 10;
            Rectangle::new([(c.start + inset, 0.0), (c.start + width - inset, c.volume)], colour.mix(0.5).filled())
        }))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
