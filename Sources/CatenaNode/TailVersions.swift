import CatenaCore
import CatenaNetwork
import CatenaWire
import Synchronization

/// A member's questions to the tail about dirty keys (CRAQ's version query): "which version of
/// this key is committed?" — a `head` in read mode ``ReadMode/tail``, answered from the tail's
/// index with the version's metadata, never its value. One connection to the tail, opened on
/// the first question and shared by every read that asks; a question to another address (the
/// tail changed) replaces it.
final class TailVersions: Sendable {
    private let hello: Hello
    private let limits: ConnectionLimits
    /// The connection to the tail being opened or open, and its address.
    private let current = Mutex<(address: Address, connection: Task<RequestConnection, any Error>)?>(nil)

    init(clusterID: String, me: NodeID, limits: ConnectionLimits) {
        self.hello = Hello(role: .client, clusterID: clusterID, senderID: me.rawValue)
        self.limits = limits
    }

    /// The LSN of the version of `key` committed at `tail` (nil: the key is absent or deleted
    /// there). Every failure — the tail unreachable, no longer the tail, its lease out, silent
    /// for `timeout` — is `unavailable`: the reader retries, here or at another member.
    func committedVersion(of key: Key, chain: ChainConfiguration, tail: ChainMember, timeout: Duration) async throws(CatenaError) -> LSN? {
        do throws(CatenaError) {
            let (task, connection) = try await connection(to: try Address(parsing: tail.address))
            let question = Frame(type: .head, chainID: chain.chainID, epoch: chain.epoch,
                                 headerExtension: RequestOptions(readMode: .tail).encoded(), payload: KeyPayload.encode(key))
            do throws(CatenaError) {
                let reply = try await connection.request(question, timeout: timeout)
                let info = try ObjectInfoPayload.decode(reply.payload)
                guard info.key == key else {
                    throw CatenaError(.protocolViolation, "the tail answered a version query for '\(key)' about '\(info.key)'")
                }
                return info.lsn
            } catch where error.code == .notFound {
                return nil
            } catch {
                if connection.isClosed { forget(task) }
                throw error
            }
        } catch {
            throw CatenaError(.unavailable, "could not ask the tail (\(tail.id) at \(tail.address)) which version of '\(key)' is committed: \(error)")
        }
    }

    private typealias Opening = Task<RequestConnection, any Error>

    /// The open connection to `address` (and the task that opened it), opening one if needed.
    private func connection(to address: Address) async throws(CatenaError) -> (Opening, RequestConnection) {
        let task: Opening = current.withLock { c in
            if let c, c.address == address { return c.connection }
            if let old = c?.connection { Task { (try? await old.value)?.close() } }
            let (hello, limits) = (self.hello, self.limits)
            let task = Task { () async throws -> RequestConnection in
                try await RequestConnection.connect(to: address, hello: hello, limits: limits)
            }
            c = (address, task)
            return task
        }
        do {
            let connection = try await task.value
            guard !connection.isClosed else {
                forget(task)
                throw CatenaError(.unavailable, "the connection to the tail closed")
            }
            return (task, connection)
        } catch {
            forget(task)
            throw (error as? CatenaError) ?? CatenaError(.unavailable, "\(error)")
        }
    }

    /// Drops the connection `task` opened if it is the current one (closing it): the next
    /// question opens a new one.
    private func forget(_ task: Opening) {
        let dropped = current.withLock { c in
            guard c?.connection == task else { return false }
            c = nil
            return true
        }
        if dropped { Task { (try? await task.value)?.close() } }
    }

    /// Closes the connection, if any.
    func close() {
        let task = current.withLock { c in
            defer { c = nil }
            return c?.connection
        }
        if let task { Task { (try? await task.value)?.close() } }
    }
}
