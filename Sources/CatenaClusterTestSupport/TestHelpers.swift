import CatenaCore
import Foundation
import Logging

/// The logger of in-process clusters and tests: silent unless `CATENA_TEST_LOG` names a level
/// (e.g. `CATENA_TEST_LOG=debug`).
public let testLogger: Logger = {
    guard let level = ProcessInfo.processInfo.environment["CATENA_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) else {
        return Logger(label: "catena.test", factory: { _ in SwiftLogNoOpLogHandler() })
    }
    var logger = Logger(label: "catena.test")
    logger.logLevel = level
    return logger
}()

/// What a test harness step failed at (the cluster did not come up in time, a condition was not
/// met before its deadline, …).
public struct HarnessError: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String

    /// An error saying `description`.
    public init(description: String) {
        self.description = description
    }
}

/// Runs `body`, which blocks (a socket read, a child process's exit), on a thread of its own and
/// returns what it returns. Called directly from a test's task it would hold one of Swift's
/// cooperative threads meanwhile, and the servers the test talks to run on those threads too: on a
/// one-core machine the pool has a single thread, and the test would wait for a server that cannot run.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// ``onOwnThread(_:)`` for a `body` that does not throw.
public func offThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}

/// `count` deterministic pseudo-random bytes from `seed` (SplitMix64).
public func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= raw.count {
            raw.storeBytes(of: generator.next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < raw.count {
            raw[i] = UInt8(truncatingIfNeeded: generator.next())
            i += 1
        }
    }
    return out
}

/// The code of the ``CatenaError`` `error` is, if it is one.
public func code(of error: any Error) -> CatenaError.Code? { (error as? CatenaError)?.code }

/// The `catena` executable next to the test bundle (built by `swift build --build-tests`).
public func catenaExecutable() throws -> String {
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let candidates = [bundle.appendingPathComponent("catena").path, bundle.deletingLastPathComponent().appendingPathComponent("catena").path]
    guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw CatenaError(.notFound, "no catena executable near \(bundle.path); run `swift build --build-tests` first")
    }
    return path
}

