import CatenaCore
import CatenaStorage
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A ``FileSystem`` that delegates everything to another one (typically a
/// ``CrashSimulatingFileSystem``) but can hold chosen operations until the test releases them,
/// to force an interleaving of the store's threads deterministically.
///
/// A test arms a gate (``holdNextSync(matching:)``, ``holdNextOpen(matching:)``); the first
/// matching operation after that blocks the store thread performing it — before the operation
/// reaches the wrapped file system — until the test calls ``Gate/open()``. Meanwhile the test
/// waits for ``Gate/waitUntilReached(timeout:)`` and then does whatever must happen while the
/// store is stuck there. Only store threads ever block (never Swift's cooperative pool).
///
/// Every armed gate must be opened by the test, also when it fails (`defer { gate.open() }`):
/// a store thread blocked at a gate that is never opened blocks `close()` forever. Opening a
/// gate that was never reached disarms it.
///
/// Files opened through this file system are wrapped, so that their `sync()` consults the gates;
/// everything else passes straight through.
public final class GatedFileSystem: FileSystem, Sendable {
    /// The file system every operation is delegated to.
    public let base: any FileSystem

    fileprivate enum Operation: Sendable { case sync, create }

    private struct Rule: Sendable {
        var operation: Operation
        var suffix: String
        var action: Action
    }

    private enum Action: Sendable {
        case hold(Gate)
        case fail(CatenaError.Code)
    }

    /// Armed rules, oldest first; each fires once.
    private let rules = Mutex<[Rule]>([])
    /// How much longer every `sync()` takes: a slow disk. The delay blocks the store's own
    /// syncer thread, never Swift's cooperative pool.
    public let syncDelay: Duration
    private let syncCount = Atomic<Int>(0)

    /// Wraps `base`; every `sync()` of a file opened through it takes `syncDelay` longer.
    public init(wrapping base: any FileSystem, syncDelay: Duration = .zero) {
        self.base = base
        self.syncDelay = syncDelay
    }

    /// File syncs that went through this file system so far.
    public var syncs: Int { syncCount.load(ordering: .relaxed) }

    // MARK: - Arming

    /// Holds the next `sync()` of a file whose path ends with `pathSuffix` (before it reaches the
    /// wrapped file) until the returned gate is opened. For example `".seg"` (a segment, not a
    /// `.seg.tmp`), `".seg.tmp"` (a compaction or truncation output) or a full segment name.
    public func holdNextSync(matching pathSuffix: String) -> Gate {
        let gate = Gate(description: "sync of *\(pathSuffix)")
        rules.withLock { $0.append(Rule(operation: .sync, suffix: pathSuffix, action: .hold(gate))) }
        return gate
    }

    /// Holds the next `open(_:mode: .createNew)` of a path ending with `pathSuffix` (before the
    /// file is created) until the returned gate is opened.
    public func holdNextOpen(matching pathSuffix: String) -> Gate {
        let gate = Gate(description: "create of *\(pathSuffix)")
        rules.withLock { $0.append(Rule(operation: .create, suffix: pathSuffix, action: .hold(gate))) }
        return gate
    }

    /// Makes the next `open(_:mode: .createNew)` of a path ending with `pathSuffix` throw a
    /// ``CatenaError`` with `code` (for example ``CatenaError/Code/diskFull``) without creating
    /// anything.
    public func failNextCreate(matching pathSuffix: String, with code: CatenaError.Code) {
        rules.withLock { $0.append(Rule(operation: .create, suffix: pathSuffix, action: .fail(code))) }
    }

    /// Counts a sync and sleeps ``syncDelay``.
    fileprivate func countSync() {
        syncCount.add(1, ordering: .relaxed)
        guard syncDelay > .zero else { return }
        let (seconds, attoseconds) = syncDelay.components
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        nanosleep(&ts, nil)
    }

    /// Whether some armed rule has not fired yet.
    public var hasArmedRules: Bool { rules.withLock { !$0.isEmpty } }

    /// Fires the first armed rule for `operation` on `path`, if any: blocks at its gate or throws.
    fileprivate func pass(_ operation: Operation, _ path: String) throws(CatenaError) {
        let action: Action? = rules.withLock { rules in
            guard let i = rules.firstIndex(where: { $0.operation == operation && path.hasSuffix($0.suffix) }) else { return nil }
            return rules.remove(at: i).action
        }
        switch action {
        case nil: return
        case .hold(let gate): gate.block()
        case .fail(let code): throw CatenaError(code, "open \(path): injected failure (GatedFileSystem)")
        }
    }

    // MARK: - FileSystem

    public func createDirectory(_ path: String) throws(CatenaError) { try base.createDirectory(path) }

    public func contentsOfDirectory(_ path: String) throws(CatenaError) -> [String] { try base.contentsOfDirectory(path) }

    public func fileExists(_ path: String) -> Bool { base.fileExists(path) }

    /// Opens through the wrapped file system (``FileOpenMode/createNew`` consults the gates
    /// first) and wraps the file so that its `sync()` consults them too.
    public func open(_ path: String, mode: FileOpenMode) throws(CatenaError) -> any StorageFile {
        if mode == .createNew { try pass(.create, path) }
        return GatedFile(base: try base.open(path, mode: mode), fileSystem: self)
    }

    public func rename(_ from: String, to: String) throws(CatenaError) { try base.rename(from, to: to) }

    public func remove(_ path: String) throws(CatenaError) { try base.remove(path) }

    public func syncDirectory(_ path: String) throws(CatenaError) { try base.syncDirectory(path) }

    public func lock(_ path: String) throws(CatenaError) -> any FileLock { try base.lock(path) }
    public func lockSharedIfExists(_ path: String) throws(CatenaError) -> (any FileLock)? { try base.lockSharedIfExists(path) }
}

extension GatedFileSystem {
    /// One held operation: the store thread that reaches it blocks until the test opens it.
    ///
    /// A pthread mutex and condition variable (heap-allocated, so their addresses are stable);
    /// every access to the flags holds the mutex, hence `@unchecked Sendable`.
    public final class Gate: @unchecked Sendable, CustomStringConvertible {
        /// What the gate holds, for messages.
        public let description: String
        private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        private var reached = false
        private var opened = false

        init(description: String) {
            self.description = description
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(condition, nil)
        }

        deinit {
            pthread_cond_destroy(condition)
            pthread_mutex_destroy(mutex)
            condition.deallocate()
            mutex.deallocate()
        }

        /// Lets the held operation (and any later one reaching this gate) proceed. Idempotent.
        public func open() {
            pthread_mutex_lock(mutex)
            opened = true
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }

        /// Whether a store thread has reached the gate (it may have passed it since, if opened).
        public var isReached: Bool {
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            return reached
        }

        /// Waits, polling every millisecond, until a store thread has reached the gate; `false`
        /// if none has within `timeout`.
        public func waitUntilReached(timeout: Duration = .seconds(5)) async -> Bool {
            let deadline = ContinuousClock.now + timeout
            while !isReached {
                if ContinuousClock.now >= deadline { return false }
                do { try await Task.sleep(for: .milliseconds(1)) } catch { return isReached }  // cancelled: no spinning
            }
            return true
        }

        /// Called on a store thread: marks the gate reached and blocks until it is opened.
        fileprivate func block() {
            pthread_mutex_lock(mutex)
            reached = true
            while !opened { pthread_cond_wait(condition, mutex) }
            pthread_mutex_unlock(mutex)
        }
    }
}

/// A file opened through a ``GatedFileSystem``: `sync()` consults its gates, the rest delegates.
final class GatedFile: StorageFile, Sendable {
    let base: any StorageFile
    let fileSystem: GatedFileSystem

    init(base: any StorageFile, fileSystem: GatedFileSystem) {
        self.base = base
        self.fileSystem = fileSystem
    }

    var path: String { base.path }

    func size() throws(CatenaError) -> UInt64 { try base.size() }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(CatenaError) -> Int {
        try base.read(at: offset, into: buffer)
    }

    func write(_ chunks: [[UInt8]], at offset: UInt64) throws(CatenaError) { try base.write(chunks, at: offset) }

    func sync() throws(CatenaError) {
        try fileSystem.pass(.sync, base.path)
        fileSystem.countSync()
        try base.sync()
    }

    func truncate(to size: UInt64) throws(CatenaError) { try base.truncate(to: size) }

    func close() { base.close() }
}
