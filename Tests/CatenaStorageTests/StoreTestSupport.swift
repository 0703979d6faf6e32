import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Foundation
import Logging

/// Builds records and stores for the storage tests.
struct Fixture {
    let fs: CrashSimulatingFileSystem
    let directory: String
    var configure: @Sendable (inout StoreConfiguration) -> Void = { _ in }

    init(fs: CrashSimulatingFileSystem = CrashSimulatingFileSystem(), directory: String = "/data/n1",
         configure: @escaping @Sendable (inout StoreConfiguration) -> Void = { _ in }) {
        self.fs = fs
        self.directory = directory
        self.configure = configure
    }

    var configuration: StoreConfiguration {
        var c = StoreConfiguration(directory: directory, clusterID: "test", nodeID: "n1")
        c.fileSystem = fs
        configure(&c)
        return c
    }

    func open() async throws -> Store {
        try await Store.open(configuration, logger: quietLogger)
    }
}

func key(_ s: String) -> Key { try! Key(s) }

/// A put record; its head timestamp is `timestamp`, or `seq` nanoseconds if nil.
func put(_ k: String, _ value: [UInt8], seq: UInt64, epoch: UInt64 = 1, contentType: String? = nil,
         requestID: RequestID = .none, timestamp: UInt64? = nil) -> EncodedRecord {
    var r = Record(type: .put, key: key(k), lsn: LSN(epoch: epoch, seq: seq), timestamp: timestamp ?? seq, requestID: requestID, value: value)
    r.contentType = contentType
    return try! r.encoded()
}

/// A delete record; its head timestamp is `timestamp`, or `seq` nanoseconds if nil.
func del(_ k: String, seq: UInt64, epoch: UInt64 = 1, requestID: RequestID = .none, timestamp: UInt64? = nil) -> EncodedRecord {
    try! Record(type: .delete, key: key(k), lsn: LSN(epoch: epoch, seq: seq), timestamp: timestamp ?? seq, requestID: requestID).encoded()
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// The live state (key -> value) after applying `records` in order.
func model(_ records: some Sequence<EncodedRecord>) -> [String: [UInt8]] {
    var m: [String: [UInt8]] = [:]
    for r in records { m[r.key.string] = r.type == .delete ? nil : Array(r.value) }
    return m
}

/// Every live key and its value, read through the store's public API.
func contents(_ store: Store) async throws -> [String: [UInt8]] {
    var out: [String: [UInt8]] = [:]
    for k in try store.allKeys() { out[k] = try await store.value(k) }
    return out
}

extension Store {
    /// The value of `k`, or nil.
    func value(_ k: String) async throws -> [UInt8]? {
        guard let object = try get(key(k)) else { return nil }
        return try await object.bytes()
    }

    /// Every live key, through pagination.
    func allKeys(prefix: String = "", pageSize: Int = 1000) throws -> [String] {
        var out: [String] = []
        var after: Key? = nil
        while true {
            let page = try list(prefix: Array(prefix.utf8), after: after, limit: pageSize)
            out += page.objects.map(\.key.string)
            guard let next = page.nextCursor else { return out }
            after = next
        }
    }
}

/// A temporary directory on the real disk, removed by `cleanup()`.
struct TempDirectory {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "catena-test-" + UUID().uuidString
    }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Tests log nothing unless CATENA_TEST_LOG names a level (e.g. CATENA_TEST_LOG=trace).
let quietLogger: Logger = {
    guard let level = ProcessInfo.processInfo.environment["CATENA_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) else {
        return Logger(label: "catena.test", factory: { _ in SwiftLogNoOpLogHandler() })
    }
    var logger = Logger(label: "catena.test")
    logger.logLevel = level
    return logger
}()
