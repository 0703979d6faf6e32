import CatenaCore
import CatenaNetwork
import CatenaWire
import CoreMetrics
import Synchronization

/// Client requests' latencies (``CatenaMetric/requestDuration``) and errors
/// (``CatenaMetric/requestErrors``), by operation: the label `op` is the kind of write (`put`,
/// `delete`, `upload_part`, ...) or of read (`get`, `head`, `list`, ...).
final class RequestInstruments: Sendable {
    private let registry: MetricsRegistry
    private let timers: [String: CoreMetrics.Timer]
    /// The error counters made so far, by op and code (a bounded set: ops × codes).
    private let errors: Mutex<[String: CoreMetrics.Counter]>
    /// Bytes of catch-up chunks sent to joining nodes.
    let catchUpSentBytes: CoreMetrics.Counter
    /// Reads that asked the tail which version of a dirty key is committed.
    let versionQueries: CoreMetrics.Counter

    init(_ registry: MetricsRegistry) {
        self.registry = registry
        catchUpSentBytes = registry.counter(.catchUpSentBytes)
        versionQueries = registry.counter(.versionQueries)
        let ops = RecordType.known.map(Self.op) + ["get", "head", "list", "list_uploads", "list_parts", "scrub", "copy"]
        timers = Dictionary(ops.map { ($0, registry.timer(.requestDuration, labels: [("op", $0)])) }, uniquingKeysWith: { first, _ in first })
        // The errors of a failover exist from the start at 0: `rate` and `increase` take a
        // series' first sample as its start, so the first burst would not show otherwise.
        var errors: [String: CoreMetrics.Counter] = [:]
        for op in ["put", "delete", "get", "head", "list"] {
            for code in [CatenaError.Code.unavailable, .redirect, .busy] {
                errors["\(op)/\(code)"] = registry.counter(.requestErrors, labels: [("op", op), ("code", "\(code)")])
            }
        }
        self.errors = Mutex(errors)
    }

    /// The `op` of a write of kind `type`.
    static func op(_ type: RecordType) -> String {
        switch type {
        case .uploadCreate: "upload_create"
        case .uploadPart: "upload_part"
        case .uploadAbort: "upload_abort"
        default: "\(type)"
        }
    }

    /// The `op` of a request frame other than a write; nil for those not counted (pings and
    /// status requests, which are not client operations, and catch-up streams, which last as
    /// long as the copy: ``CatenaMetric/catchUpSentBytes`` counts those).
    static func op(_ type: FrameType) -> String? {
        switch type {
        case .get, .getRange: "get"
        case .head: "head"
        case .list: "list"
        case .listUploads: "list_uploads"
        case .listParts: "list_parts"
        case .scrub: "scrub"
        case .copy: "copy"
        default: nil
        }
    }

    /// Records a request of `op` that began at `start` and ended now, with its error if it failed.
    func record(_ op: String, since start: ContinuousClock.Instant, error: CatenaError?) {
        timers[op]?.recordNanoseconds((ContinuousClock.now - start).nanosecondsClamped)
        if let error {
            let key = "\(op)/\(error.code)"
            let counter = errors.withLock { errors in
                if let counter = errors[key] { return counter }
                let counter = registry.counter(.requestErrors, labels: [("op", op), ("code", "\(error.code)")])
                errors[key] = counter
                return counter
            }
            counter.increment()
        }
    }
}
