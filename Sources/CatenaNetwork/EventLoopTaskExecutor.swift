import NIOCore

/// Runs a task's jobs on one NIO event loop: a task that serves a connection, with this as its
/// executor preference, runs on the thread that reads and writes the connection's socket. When
/// the event loop hands it a frame, resuming the task is an entry in the loop's own queue,
/// run before the loop sleeps again, instead of a wake-up of another thread — on a machine with
/// few cores, thread hand-overs are much of what a small request costs.
///
/// Only for tasks that never block: what blocks (disk reads, waits on locks held for long) must
/// run elsewhere (`globalConcurrentExecutor`, or a thread pool), or it stalls every connection
/// of the loop.
public final class EventLoopTaskExecutor: TaskExecutor, Sendable {
    /// The event loop the jobs run on.
    public let eventLoop: any EventLoop

    /// An executor over `eventLoop`.
    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

extension EventLoopTaskExecutor {
    /// How many event loops (network threads) a `catena` process runs, or nil for NIO's default
    /// (one per core): `CATENA_EVENT_LOOPS` if set to a positive number; else, for a server (a
    /// node or the master), half the cores, at least one. A node's event loops share the cores
    /// with its store's writer and syncer threads and, on a small machine, with the other
    /// processes of the chain: with a loop per core, more frames arrive while the loop of their
    /// connection sleeps, and each costs a wake-up. Clients (the CLI, the benchmarks' client
    /// side) keep NIO's default, as applications do: one loop reading many large replies is
    /// slower than two.
    public static func loopCount(environment: [String: String], cores: Int, server: Bool) -> Int? {
        if let text = environment["CATENA_EVENT_LOOPS"], let n = Int(text), n >= 1 { return n }
        return server ? max(1, cores / 2) : nil
    }
}
