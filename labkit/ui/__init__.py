"""What people look at: figures and live plots, widget panels, doctor, the tour and its report, the command line."""
