/// The one error type of Catena's libraries.
///
/// Modelled on postgres-nio's `PSQLError`: a struct with a nested ``Code``, so new codes can be
/// added without breaking anyone's exhaustive `switch`. The ``message`` is meant for humans and
/// logs; match on ``code``.
public struct CatenaError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable, matchable value.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The code's name, as error frames carry it.
        public var description: String { name }

        /// A key is empty, longer than 1024 bytes, not UTF-8, or contains NUL.
        public static let invalidKey = Code("invalidKey")
        /// A value is larger than the configured per-record limit, or a write as a whole (key,
        /// extensions and value) is larger than the frames that carry it down the chain allow
        /// (see `WriteLimits` in CatenaWire). The message names the sizes and the limit.
        public static let valueTooLarge = Code("valueTooLarge")
        /// Bytes claim to be a record (or file) but are not well formed.
        public static let malformed = Code("malformed")
        /// A record or file has a format version this build does not read.
        public static let unsupportedVersion = Code("unsupportedVersion")
        /// A record carries an extension field marked must-understand that this build does not know.
        public static let unknownMustUnderstandField = Code("unknownMustUnderstandField")
        /// A record type this build does not know.
        public static let unknownRecordType = Code("unknownRecordType")
        /// A checksum did not match: the bytes were damaged.
        public static let checksumMismatch = Code("checksumMismatch")
        /// Damaged data on disk that is not a torn tail; the message names file and offset.
        public static let corruption = Code("corruption")
        /// The key does not exist (or was deleted).
        public static let notFound = Code("notFound")
        /// A conditional write's ``WriteCondition`` did not hold against the key's newest
        /// version (committed or in flight) at the head; nothing was written. The message names
        /// the version the head found. Not retried: read the key again and decide.
        public static let preconditionFailed = Code("preconditionFailed")
        /// The write was not applied and never will be: its request id was settled (a fence
        /// record took it, `CatenaClient.outcome(ofWrite:key:)`), so the head refuses it.
        public static let notApplied = Code("notApplied")
        /// A write's outcome can no longer be settled: it was sent before the oldest writes the
        /// head still remembers (the request-id window, 60 s by default). It may or may not have
        /// applied; read the key to decide.
        public static let settlementExpired = Code("settlementExpired")
        /// An appended record's LSN does not directly follow the log's end.
        public static let lsnOutOfOrder = Code("lsnOutOfOrder")
        /// The operation would remove or require records at or below the commit watermark.
        public static let belowCommitWatermark = Code("belowCommitWatermark")
        /// Records older than asked for were compacted away; a full copy is needed.
        public static let historyCompacted = Code("historyCompacted")
        /// A manifest names chunks that were never appended.
        public static let incompleteUpload = Code("incompleteUpload")
        /// The multipart upload does not exist: never created, completed, aborted, or expired
        /// (the store's `abandonedUploadTimeout`, 7 days after it was created).
        public static let noSuchUpload = Code("noSuchUpload")
        /// A multipart upload's completion names a part that was not uploaded, or whose
        /// checksum is not the one given (a part uploaded again since), or parts out of order.
        public static let invalidPart = Code("invalidPart")
        /// The device is full (ENOSPC / EDQUOT).
        public static let diskFull = Code("diskFull")
        /// The process may not read or write a path (EACCES / EPERM / EROFS).
        public static let permissionDenied = Code("permissionDenied")
        /// Another process holds the data directory's lock.
        public static let directoryLocked = Code("directoryLocked")
        /// The data directory cannot be read or is not a Catena data directory.
        public static let directoryUnreadable = Code("directoryUnreadable")
        /// The data directory belongs to another cluster or node.
        public static let identityMismatch = Code("identityMismatch")
        /// Any other I/O failure; after a failed fsync the store refuses writes until reopened.
        public static let ioFailure = Code("ioFailure")
        /// The store, the connection or the client was closed. A client retries a request whose
        /// connection closed under it; a closed client (`CatenaClient.close()`) answers every
        /// call with this code.
        public static let closed = Code("closed")
        /// An argument is out of its documented range.
        public static let invalidArgument = Code("invalidArgument")
        /// A frame on the wire is larger than the connection accepts.
        public static let frameTooLarge = Code("frameTooLarge")
        /// A frame type the receiver does not know.
        public static let unknownFrameType = Code("unknownFrameType")
        /// The peers share no protocol version.
        public static let protocolVersionUnsupported = Code("protocolVersionUnsupported")
        /// The peer belongs to another cluster (ports get reused).
        public static let wrongCluster = Code("wrongCluster")
        /// The connection broke the protocol (e.g. a request before the handshake).
        public static let protocolViolation = Code("protocolViolation")
        /// The sender's configuration epoch is older than the receiver's (fencing).
        public static let staleEpoch = Code("staleEpoch")
        /// The sender's configuration epoch is newer: the receiver must refresh its configuration.
        public static let epochAhead = Code("epochAhead")
        /// This node does not take that request in its role; the error names the node that does.
        public static let redirect = Code("redirect")
        /// Too many bytes are in flight down the chain; retry after a short wait.
        public static let busy = Code("busy")
        /// No node or master could be reached (connection refused or lost).
        public static let unavailable = Code("unavailable")
        /// The operation did not finish before its deadline; a write may or may not have applied.
        public static let timeout = Code("timeout")
        /// The calling task was cancelled before the operation finished; a write may or may not
        /// have applied. Not retried.
        public static let cancelled = Code("cancelled")

        /// The code with this name, as carried in error frames. Names this build does not know
        /// are kept as they are, so they can be logged and passed on.
        public static func named(_ name: String) -> Code { Code(name) }
    }

    /// What went wrong.
    public var code: Code
    /// A human-readable explanation naming the file, offset, key or limit involved.
    public var message: String
    /// The request id of the write that failed (set by `CatenaClient` on the errors of its
    /// writes and copies). A write that failed with an error the client retries or gives up on
    /// — `timeout`, `cancelled`, `unavailable`, `closed`, `busy`, `redirect`, `staleEpoch`,
    /// `epochAhead` — may or may not have applied, and `CatenaClient.outcome(ofWrite:key:)`
    /// settles which; a refusal (`preconditionFailed`, `invalidArgument`, `valueTooLarge`, …)
    /// applied nothing.
    public var requestID: RequestID?

    /// Creates an error.
    public init(_ code: Code, _ message: String, requestID: RequestID? = nil) {
        self.code = code
        self.message = message
        self.requestID = requestID
    }

    /// `code: message`, and the request id if there is one.
    public var description: String { "\(code): \(message)" + (requestID.map { " (request \($0))" } ?? "") }
}

extension Result where Failure == CatenaError {
    /// The outcome of an async `body` that throws ``CatenaError``: `Result(catching:)` for async
    /// code, where a typed `do`/`catch` would otherwise be spelled out at every call site.
    public static func catching(_ body: () async throws(CatenaError) -> Success) async -> Result {
        do {
            return .success(try await body())
        } catch {
            return .failure(error)
        }
    }
}
