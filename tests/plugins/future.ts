/** A plugin written for a newer minor version of the API than pgdog's. */
export const apiVersion = "1.99.0";
export function route(): null {
  return null;
}
