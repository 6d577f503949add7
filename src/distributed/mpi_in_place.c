/* MPI_IN_PLACE is a macro whose value differs between MPI libraries (Open MPI: (void *) 1,
   MPICH: (void *) -1); this hands the one of the mpi.h accel is built against to Rust. */
#include <mpi.h>

void *accel_mpi_in_place(void) { return MPI_IN_PLACE; }
