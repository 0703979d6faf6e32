import CatenaClient
import CatenaCore
import Synchronization

/// A steady write load for the failover and join benchmarks: every client puts one value after
/// another (a new key each time) until the load is stopped, and the load keeps, for every
/// acknowledged put, when it was invoked and when it was acknowledged.
///
/// A put that fails (after the client's own retries, at its request deadline) is counted and
/// the client goes on with the next one.
final class SteadyLoad: Sendable {
    /// One acknowledged put: nanoseconds since ``origin``.
    struct Ack: Hashable, Sendable {
        /// When `put` was called.
        var invoked: Int64
        /// When it returned successfully.
        var acknowledged: Int64
    }

    /// The instant the load's times count from.
    let origin: ContinuousClock.Instant
    /// Bytes per value.
    let valueSize: Int
    private let stopped = Atomic<Bool>(false)
    private let acks = Mutex<[Ack]>([])
    private let acknowledgedPuts = Atomic<Int>(0)
    private let failedPuts = Atomic<Int>(0)
    private let firstError = Mutex<CatenaError?>(nil)

    private init(origin: ContinuousClock.Instant, valueSize: Int) {
        self.origin = origin
        self.valueSize = valueSize
    }

    /// Runs the load from every client of `clients` (values from `values`, keys
    /// `keyPrefix/<n>`, n from `firstIndex` on) while `body` runs; then stops it and waits for
    /// the puts in progress.
    static func with<R: Sendable>(
        clients: [CatenaClient], values: MixedValues, keyPrefix: String, firstIndex: Int = 0, origin: ContinuousClock.Instant = .now,
        _ body: (SteadyLoad) async throws(CatenaError) -> R
    ) async throws(CatenaError) -> R {
        let load = SteadyLoad(origin: origin, valueSize: values.size)
        let outcome = await withTaskGroup(of: Void.self) { group in
            for (k, client) in clients.enumerated() {
                group.addTask { await load.write(with: client, first: firstIndex + k, stride: clients.count, values: values, keyPrefix: keyPrefix) }
            }
            let outcome = await Result.catching { () async throws(CatenaError) -> R in try await body(load) }
            load.stopped.store(true, ordering: .relaxed)
            await group.waitForAll()
            return outcome
        }
        return try outcome.get()
    }

    private func write(with client: CatenaClient, first: Int, stride: Int, values: MixedValues, keyPrefix: String) async {
        var index = first
        while !stopped.load(ordering: .relaxed) {
            let value = values.value(index)
            let invoked = now
            do {
                try await client.put("\(keyPrefix)/\(index)", value)
                let acknowledged = now
                acks.withLock { $0.append(Ack(invoked: invoked, acknowledged: acknowledged)) }
                acknowledgedPuts.add(1, ordering: .relaxed)
            } catch {
                failedPuts.add(1, ordering: .relaxed)
                firstError.withLock { $0 = $0 ?? error }
            }
            index += stride
        }
    }

    /// Nanoseconds since ``origin``.
    var now: Int64 { (ContinuousClock.now - origin).nanosecondsClamped }

    /// Puts acknowledged so far.
    var acknowledged: Int { acknowledgedPuts.load(ordering: .relaxed) }

    /// Puts that failed so far.
    var failed: Int { failedPuts.load(ordering: .relaxed) }

    /// The first error a put failed with, if any.
    var firstFailure: CatenaError? { firstError.withLock { $0 } }

    /// Acknowledgements recorded so far, as a count: a cursor for ``acknowledgements(from:)``.
    var recorded: Int { acks.withLock { $0.count } }

    /// Acknowledgements recorded since `cursor` (a ``recorded`` value), in the order they were
    /// recorded (which may differ from their acknowledgement times by a few microseconds).
    func acknowledgements(from cursor: Int = 0) -> [Ack] {
        acks.withLock { Array($0[min(cursor, $0.count)...]) }
    }
}
