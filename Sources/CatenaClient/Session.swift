import CatenaCore
import Synchronization

/// What one client — or several processes sharing it — has seen of the chain: the highest LSN it
/// wrote or read. Reads in mode `ReadMode.any` carry it, and a member answers only once it
/// holds everything through it (waiting briefly, or sending the reader to another member). That
/// gives, within a session:
///
/// - **read-your-writes**: a read sees the session's own acknowledged writes (in any
///   `AckMode`: a member holds a write once it holds everything through its LSN);
/// - **monotonic reads**: a read never returns a version older than one the session read before;
/// - **consistent-prefix reads**: what a read sees is a prefix of the chain's log.
///
/// Linearizable and tail reads need no session: they already see every committed write. A write
/// acknowledged in a weaker mode and then lost (its members failed before it reached the rest)
/// is the exception: the chain goes on without it, and the session may then read past it.
///
/// Every ``CatenaClient`` has one (``CatenaClient/session``), shared by its views. Hand it to
/// another process as ``token`` — a short string — and take it up there with
/// ``init(token:)`` and ``CatenaClient/with(requestTimeout:attemptTimeout:retry:readMode:ack:session:logger:)``:
/// a web request's follow-up then reads what the first request wrote.
public final class Session: Sendable {
    private let seen: Mutex<LSN>

    /// A new session that has seen nothing.
    public init() {
        seen = Mutex(.zero)
    }

    /// A session that has seen what `token` (another session's ``token``) had.
    /// Throws `invalidArgument` for a string that is not one.
    public init(token: String) throws(CatenaError) {
        let parts = token.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, parts[0] == "s1", let lsn = LSN(parsing: String(parts[1])) else {
            throw CatenaError(.invalidArgument, "'\(token)' is not a session token (s1:EPOCH.SEQ)")
        }
        seen = Mutex(lsn)
    }

    /// The highest LSN the session wrote or read.
    public var lsn: LSN { seen.withLock { $0 } }

    /// The session as a short string (`s1:EPOCH.SEQ`), for ``init(token:)`` elsewhere.
    public var token: String { "s1:\(lsn.epoch).\(lsn.seq)" }

    /// Records that the session wrote or read `lsn`.
    public func observe(_ lsn: LSN) {
        seen.withLock { if lsn.seq > $0.seq { $0 = lsn } }
    }
}
