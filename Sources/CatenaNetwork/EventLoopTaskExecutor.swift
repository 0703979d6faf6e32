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
