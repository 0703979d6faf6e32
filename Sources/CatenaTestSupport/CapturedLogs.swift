import Logging
import Synchronization

/// The log lines a ``capturingLogger(_:)`` took: level and message.
public final class CapturedLogs: Sendable {
    private let entries = Mutex<[(level: Logger.Level, message: String)]>([])

    public init() {}

    /// How many lines of `level` contain `text`.
    public func count(_ level: Logger.Level, containing text: String) -> Int {
        entries.withLock { $0.filter { $0.level == level && $0.message.contains(text) }.count }
    }

    fileprivate func append(_ level: Logger.Level, _ message: String) {
        entries.withLock { $0.append((level, message)) }
    }
}

/// A logger whose every line (from trace up) goes to `logs`, for tests of what is logged.
public func capturingLogger(_ logs: CapturedLogs) -> Logger {
    Logger(label: "catena.test", factory: { _ in CapturingLogHandler(logs: logs) })
}

private struct CapturingLogHandler: LogHandler {
    let logs: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        logs.append(event.level, event.message.description)
    }
}
