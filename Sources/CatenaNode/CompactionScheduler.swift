import CatenaCore
import CatenaStorage
import Logging
import Synchronization

/// When a node raises its store's commit watermark and when it compacts. Every field has a
/// documented default; ``NodeConfiguration/compaction`` holds them.
public struct CompactionSettings: Hashable, Sendable {
    /// How often the scheduler looks: it reads the replica's acknowledged LSN and the store's
    /// garbage estimate (both in memory). Default 1 s; it looks at least as often as
    /// ``watermarkInterval``.
    public var interval: Duration = .seconds(1)
    /// The least time between two raises of the commit watermark; each one fsyncs the STATE
    /// file (temp file, fsync, rename, directory fsync). Default 5 s: compaction and a
    /// restart lag the chain by at most that much.
    public var watermarkInterval: Duration = .seconds(5)
    /// Compact once the collectable garbage reaches this share of the sealed segments' bytes
    /// (``GarbageReport/collectableRatio``); nil: never compact (the watermark is still raised).
    /// Default 0.5: the sealed log stays below about twice its live data, plus what the
    /// request-id window and the records above the watermark hold back.
    public var garbageRatio: Double? = 0.5
    /// Compact only once at least this many collectable bytes have accumulated beyond what the
    /// last compaction could not drop, so a small store does not compact again and again, nor
    /// one whose garbage compaction cannot reach. Default 64 MiB, one default segment.
    public var minimumGarbageBytes: UInt64 = 64 << 20

    /// The defaults above.
    public init() {}

    /// A description of the first problem with these settings, or nil.
    public var problem: String? {
        if interval <= .zero { return "the compaction scheduler's interval must be positive" }
        if watermarkInterval < .zero { return "the watermark interval cannot be negative" }
        if let r = garbageRatio, !(r > 0 && r <= 1) { return "the garbage ratio must be above 0 and at most 1, not \(r)" }
        return nil
    }
}

extension CompactionPolicy {
}

/// The compaction scheduler's decisions as a pure machine: an observation in, actions out.
/// Time is a value (the scheduler's monotonic clock since it started); nothing here reads a
/// clock, a file or the replica.
public struct CompactionPolicy: Sendable {
    /// What the scheduler sees at one tick.
    public struct Observation: Hashable, Sendable {
        /// Time since the scheduler started.
        public var now: Duration
        /// The highest LSN known to be on every replica: what this node acknowledged upstream
        /// (the head: committed; every node's durable log holds its successor's).
        public var acknowledged: LSN
        /// The store's highest durable LSN.
        public var durable: LSN
        /// The store's commit watermark.
        public var watermark: LSN
        /// The store's garbage estimate.
        public var garbage: GarbageReport

        /// Creates an observation.
        public init(now: Duration, acknowledged: LSN, durable: LSN, watermark: LSN, garbage: GarbageReport) {
            self.now = now
            self.acknowledged = acknowledged
            self.durable = durable
            self.watermark = watermark
            self.garbage = garbage
        }
    }

    /// What to do.
    public enum Action: Hashable, Sendable {
        /// Raise (and persist) the store's commit watermark to this LSN.
        case raiseWatermark(LSN)
        /// Run a compaction; report its end with ``CompactionPolicy/compactionFinished(leaving:)``.
        case compact
    }

    /// The settings.
    public let settings: CompactionSettings
    /// When the watermark was last raised, if ever.
    public private(set) var lastRaise: Duration?
    /// Collectable bytes the last compaction left (it could not drop them): only garbage beyond
    /// them counts towards ``CompactionSettings/minimumGarbageBytes``.
    public private(set) var leftByLastCompaction: UInt64 = 0
    /// Whether a compaction is running.
    public private(set) var compacting = false

    /// A policy with `settings`.
    public init(settings: CompactionSettings) {
        self.settings = settings
    }

    /// One tick. Raises the watermark to the acknowledged LSN when that is higher, durable
    /// here, and the last raise is at least ``CompactionSettings/watermarkInterval`` ago (or
    /// `final`: the node is stopping, so a restart starts from the latest); compacts when the
    /// collectable ratio reaches ``CompactionSettings/garbageRatio`` and enough new garbage has
    /// accumulated, unless a compaction runs.
    public mutating func tick(_ o: Observation, final: Bool = false) -> [Action] {
        var actions: [Action] = []
        // Another compaction (an operator's) may have collected what the last one left.
        leftByLastCompaction = min(leftByLastCompaction, o.garbage.collectableBytes)
        let due = final || lastRaise.map { o.now - $0 >= settings.watermarkInterval } ?? true
        if o.acknowledged > o.watermark && o.acknowledged <= o.durable && due {
            actions.append(.raiseWatermark(o.acknowledged))
            lastRaise = o.now
        }
        if !final, !compacting, let ratio = settings.garbageRatio, o.garbage.sealedBytes > 0,
           o.garbage.collectableRatio >= ratio,
           o.garbage.collectableBytes >= leftByLastCompaction + settings.minimumGarbageBytes {
            actions.append(.compact)
            compacting = true
        }
        return actions
    }

    /// The compaction ended (done, stopped or failed), leaving `collectable` bytes it did not drop.
    public mutating func compactionFinished(leaving collectable: UInt64) {
        compacting = false
        leftByLastCompaction = collectable
    }
}

/// Runs a node's garbage collection: every ``CompactionSettings/interval`` it raises the
/// store's commit watermark to the highest LSN known to be on every replica (at most every
/// ``CompactionSettings/watermarkInterval``, since each raise fsyncs the STATE file) and
/// compacts when the store's garbage estimate says it is worth it (``CompactionPolicy``).
///
/// Compaction runs on the store's maintenance thread while reads and writes go on; the
/// scheduler awaits it, so it raises no watermark meanwhile. Cancelling ``run()`` stops a
/// running compaction after the group of segments it is rewriting, raises the watermark one
/// last time and returns.
public final class CompactionScheduler: Sendable {
    /// What the scheduler did since it started. Checked in tests; for the node's metrics.
    public struct Metrics: Hashable, Sendable {
        /// Watermark raises persisted.
        public var watermarkRaises = 0
        /// Watermark raises the store refused or could not persist (retried at the next due tick).
        public var watermarkRaiseFailures = 0
        /// Compactions run (including ones that found nothing to drop).
        public var compactions = 0
        /// Compactions that failed.
        public var compactionFailures = 0
        /// Bytes compactions gave back.
        public var bytesReclaimed: UInt64 = 0
        /// The garbage estimate at the last tick.
        public var lastGarbage = GarbageReport()
    }

    private let store: Store
    private let acknowledged: @Sendable () async -> LSN
    private let logger: Logger
    private let policy: Mutex<CompactionPolicy>
    private let counters = Mutex(Metrics())
    private let started = ContinuousClock.now

    /// A scheduler for `store`; `acknowledged` gives the highest LSN known to be on every
    /// replica (the node passes its replica's acknowledged LSN).
    public init(store: Store, settings: CompactionSettings, logger: Logger, acknowledged: @escaping @Sendable () async -> LSN) {
        self.store = store
        self.acknowledged = acknowledged
        self.logger = logger
        self.policy = Mutex(CompactionPolicy(settings: settings))
    }

    /// The settings.
    public var settings: CompactionSettings { policy.withLock { $0.settings } }

    /// What the scheduler did so far.
    public var metrics: Metrics { counters.withLock { $0 } }

    /// Ticks every ``CompactionSettings/interval`` until cancelled, then raises the watermark
    /// a last time.
    public func run() async {
        let interval = max(min(settings.interval, settings.watermarkInterval), .milliseconds(10))
        while !Task.isCancelled {
            await tick(now: ContinuousClock.now - started)
            try? await Task.sleep(for: interval)
        }
        // In a task of its own: this one is cancelled, and the store's thread pools refuse
        // work for cancelled tasks.
        await Task { await self.tick(now: ContinuousClock.now - self.started, final: true) }.value
    }

    /// One round: observe, decide, act. `run()` calls it; tests call it with their own `now`.
    public func tick(now: Duration, final: Bool = false) async {
        let observation = CompactionPolicy.Observation(
            now: now, acknowledged: await acknowledged(), durable: store.highestLSN, watermark: store.commitWatermark,
            garbage: store.garbage)
        counters.withLock { $0.lastGarbage = observation.garbage }
        let actions = policy.withLock { $0.tick(observation, final: final) }
        for action in actions {
            switch action {
            case .raiseWatermark(let lsn):
                do {
                    try await store.setCommitWatermark(lsn)
                    counters.withLock { $0.watermarkRaises += 1 }
                    logger.debug("commit watermark raised", metadata: .catena([.lsn: "\(lsn)"]))
                } catch {
                    counters.withLock { $0.watermarkRaiseFailures += 1 }
                    logger.warning("could not raise the commit watermark", metadata: .catena([.lsn: "\(lsn)", .error: "\(error)"]))
                }
            case .compact:
                logger.info("compacting", metadata: .catena([
                    .collectableBytes: "\(observation.garbage.collectableBytes)",
                    .sealedBytes: "\(observation.garbage.sealedBytes)",
                ]))
                do {
                    let report = try await store.compact()
                    counters.withLock { m in
                        m.compactions += 1
                        m.bytesReclaimed += report.bytesBefore - min(report.bytesBefore, report.bytesAfter)
                    }
                } catch {
                    counters.withLock { $0.compactionFailures += 1 }
                    logger.warning("compaction failed", metadata: .catena([.error: "\(error)"]))
                }
                let left = store.garbage.collectableBytes
                policy.withLock { $0.compactionFinished(leaving: left) }
            }
        }
    }
}
