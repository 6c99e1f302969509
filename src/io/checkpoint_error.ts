/** A checkpoint file that cannot be read as what it claims to be; the message names the file. */
export class CheckpointError extends Error {
  /** Error class name. */
  override name = "CheckpointError";
}
