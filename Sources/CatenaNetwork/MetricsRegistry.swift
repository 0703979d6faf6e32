import CatenaCore
import CoreMetrics
import Prometheus
import Synchronization

/// One process's metrics, exposed in the Prometheus text format by swift-prometheus.
///
/// Two ways in:
/// - Events are recorded where they happen, through swift-metrics' API (`Timer`, `Recorder`,
///   `Counter`) made with ``factory``: request latencies, fsyncs, group commits, replication hops.
/// - State the components already keep (epochs, leases, positions in the log, their own
///   counters) is copied in when the endpoint is scraped: ``set(_:_:labels:)`` for a value now,
///   ``setTotal(_:_:labels:)`` for a count the component keeps, ``replaceSeries(_:_:)`` for a
///   gauge whose label sets come and go (a master's members).
///
/// Per process, not global (`MetricsSystem.bootstrap`): tests run several nodes in one process,
/// each with its own registry. Help text and histogram buckets come from ``CatenaMetric``.
public final class MetricsRegistry: Sendable {
    /// The registry the exposition is emitted from.
    public let prometheus: PrometheusCollectorRegistry
    /// swift-metrics' factory over ``prometheus``: metrics made with it carry the help and
    /// buckets of their ``CatenaMetric``.
    public let factory: any MetricsFactory

    private struct Scraped {
        /// The total last copied into each mirrored counter (name and labels → total).
        var totals: [String: Int] = [:]
        /// The series of each ``replaceSeries(_:_:)`` metric set at its last call.
        var series: [CatenaMetric: [String: Prometheus.Gauge]] = [:]
    }
    private let scraped = Mutex(Scraped())
    /// Held through a whole scrape: two at once (two Prometheus servers) would each read the
    /// components' totals and copy them in, and the older could land second.
    private let scraping = Mutex(())

    /// A registry for a process of kind `process`, with `catena_build_info` set.
    public init(process: CatenaMetric.Process) {
        let prometheus = PrometheusCollectorRegistry()
        self.prometheus = prometheus
        self.factory = Factory(registry: prometheus)
        set(.buildInfo, 1, labels: [("version", CatenaBuild.version), ("process", process.rawValue)])
    }

    /// A latency histogram (seconds in the exposition) for `metric`.
    public func timer(_ metric: CatenaMetric, labels: [(String, String)] = []) -> CoreMetrics.Timer {
        precondition(metric.kind == .histogram, "\(metric.name) is a \(metric.kind)")
        return CoreMetrics.Timer(label: metric.name, dimensions: labels, factory: factory)
    }

    /// A histogram of values (bytes, records) for `metric`.
    public func histogram(_ metric: CatenaMetric, labels: [(String, String)] = []) -> Recorder {
        precondition(metric.kind == .histogram, "\(metric.name) is a \(metric.kind)")
        return Recorder(label: metric.name, dimensions: labels, aggregate: true, factory: factory)
    }

    /// A counter for `metric`, incremented where its events happen.
    public func counter(_ metric: CatenaMetric, labels: [(String, String)] = []) -> CoreMetrics.Counter {
        precondition(metric.kind == .counter, "\(metric.name) is a \(metric.kind)")
        return CoreMetrics.Counter(label: metric.name, dimensions: labels, factory: factory)
    }

    /// Sets gauge `metric` to `value`.
    public func set(_ metric: CatenaMetric, _ value: Double, labels: [(String, String)] = []) {
        precondition(metric.kind == .gauge, "\(metric.name) is a \(metric.kind)")
        prometheus.makeGauge(name: metric.name, labels: labels, help: metric.help).set(value)
    }

    /// Brings counter `metric` up to `total`, a count the component keeps itself (from 0 at
    /// its start, like the counter). A total lower than the last one means the component
    /// started again: the counter goes on from where it was, by the new total.
    public func setTotal(_ metric: CatenaMetric, _ total: Int, labels: [(String, String)] = []) {
        precondition(metric.kind == .counter, "\(metric.name) is a \(metric.kind)")
        let key = Self.seriesKey(metric, labels)
        let delta = scraped.withLock { s -> Int in
            let last = s.totals[key] ?? 0
            s.totals[key] = total
            return total >= last ? total - last : total
        }
        let counter = prometheus.makeCounter(name: metric.name, labels: labels, help: metric.help)
        if delta > 0 { counter.increment(by: Int64(delta)) }
    }

    /// Sets gauge `metric` to exactly these series: each label set to its value, and the label
    /// sets of the last call that are not among them removed (a node no longer in the chain
    /// has no lag).
    public func replaceSeries(_ metric: CatenaMetric, _ values: [(labels: [(String, String)], value: Double)]) {
        precondition(metric.kind == .gauge, "\(metric.name) is a \(metric.kind)")
        scraped.withLock { s in
            var next: [String: Prometheus.Gauge] = [:]
            for (labels, value) in values {
                let gauge = prometheus.makeGauge(name: metric.name, labels: labels, help: metric.help)
                gauge.set(value)
                next[Self.seriesKey(metric, labels)] = gauge
            }
            for (key, gauge) in s.series[metric] ?? [:] where next[key] == nil {
                prometheus.unregisterGauge(gauge)
            }
            s.series[metric] = next
        }
    }

    /// A scrape: `collect` copies the components' state in (``set(_:_:labels:)``,
    /// ``setTotal(_:_:labels:)``, ``replaceSeries(_:_:)``), then the whole registry is rendered
    /// as Prometheus text (format 0.0.4). One scrape at a time.
    public func scrape(_ collect: (MetricsRegistry) -> Void) -> String {
        scraping.withLock { _ in
            collect(self)
            return prometheus.emitToString()
        }
    }

    private static func seriesKey(_ metric: CatenaMetric, _ labels: [(String, String)]) -> String {
        metric.name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }

    /// swift-metrics' factory over a registry, with each metric's help and buckets taken from
    /// ``CatenaMetric`` (a label that is not one gets no help and default buckets).
    private struct Factory: MetricsFactory {
        let registry: PrometheusCollectorRegistry

        private func help(_ label: String) -> String { CatenaMetric(rawValue: label)?.help ?? "" }

        private func buckets(_ label: String) -> [Double] {
            CatenaMetric(rawValue: label).map(\.buckets).flatMap { $0.isEmpty ? nil : $0 }
                ?? [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
        }

        func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
            registry.makeCounter(name: label, labels: dimensions, help: help(label))
        }

        func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
            registry.makeCounter(name: label, labels: dimensions, help: help(label))
        }

        func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
            registry.makeGauge(name: label, labels: dimensions, help: help(label))
        }

        func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
            guard aggregate else { return registry.makeGauge(name: label, labels: dimensions, help: help(label)) }
            return registry.makeValueHistogram(name: label, labels: dimensions, buckets: buckets(label), help: help(label))
        }

        func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
            let buckets = buckets(label).map { Duration.nanoseconds(Int64($0 * 1e9)) }
            return registry.makeDurationHistogram(name: label, labels: dimensions, buckets: buckets, help: help(label))
        }

        func destroyCounter(_ handler: any CounterHandler) {
            if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
        }

        func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
            if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
        }

        func destroyMeter(_ handler: any MeterHandler) {
            if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
        }

        func destroyRecorder(_ handler: any RecorderHandler) {
            if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
            if let histogram = handler as? ValueHistogram { registry.unregisterValueHistogram(histogram) }
        }

        func destroyTimer(_ handler: any TimerHandler) {
            if let histogram = handler as? DurationHistogram { registry.unregisterDurationHistogram(histogram) }
        }
    }
}

extension MetricsRegistry {
    /// Copies what a frame server holds now: its connections and its request budget.
    public func collectServer(_ n: FrameServerMetrics) {
        set(.connections, Double(n.openConnections))
        set(.clientConnections, Double(n.clientConnections))
        setTotal(.connectionsRefused, n.refusedConnections)
        setTotal(.idleClosed, n.idleClosedConnections)
        set(.requestsInProgressBytes, Double(n.admission.bytesInProgress))
        set(.requestsInProgressPeakBytes, Double(n.admission.peakBytesInProgress))
        set(.connectionsWaiting, Double(n.admission.waitingConnections))
    }
}
